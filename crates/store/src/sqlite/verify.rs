//! `verify_audit` for SQLite: the chain read in pages, each page checked on a blocking
//! thread while the next one is read.
//!
//! Reading rows one at a time costs a thread hand-off per entry inside sqlx, which capped
//! a walk at a few hundred thousand entries per second; hashing is several times faster
//! than that. Pages of [`PAGE`] rows arrive as one packed value (see
//! [`super::sql::VERIFY_PAGE`]), and reading page *n + 1* overlaps checking page *n*.
//! Memory stays bounded by two pages however long the chain is.

use mayfly_core::audit::{ChainVerifier, StoredColumns, VerifyReport};
use sqlx::{Row, Sqlite, Transaction};

use super::error::map_sqlx;
use super::sql;
use mayfly_core::store::StoreError;

/// Rows per page: a few MiB of packed text, enough that per-page costs vanish.
const PAGE: i64 = 16_384;

pub(crate) async fn verify(
    tx: &mut Transaction<'_, Sqlite>,
    head: Option<(u64, String)>,
) -> Result<VerifyReport, StoreError> {
    verify_in_pages(tx, head, PAGE).await
}

async fn verify_in_pages(
    tx: &mut Transaction<'_, Sqlite>,
    head: Option<(u64, String)>,
    page_rows: i64,
) -> Result<VerifyReport, StoreError> {
    let mut verifier = ChainVerifier::new();
    // Below any seq, so rows a tamperer gave a zero or negative seq are read too.
    let mut page = read_page(tx, i64::MIN, page_rows).await?;
    while let Some(Page { rows, last, packed }) = page {
        let checking = tokio::task::spawn_blocking(move || {
            check_page(&mut verifier, &packed)?;
            Ok::<_, StoreError>(verifier)
        });
        // A short page was the last one; otherwise read on while this one is checked.
        page = if rows == page_rows {
            read_page(tx, last, page_rows).await?
        } else {
            None
        };
        verifier = checking.await.map_err(|e| {
            StoreError::Backend(format!("the audit verification task failed: {e}"))
        })??;
        if verifier.broken() {
            break;
        }
    }
    Ok(verifier.finish(head))
}

struct Page {
    rows: i64,
    last: i64,
    packed: Vec<u8>,
}

async fn read_page(
    tx: &mut Transaction<'_, Sqlite>,
    after: i64,
    page_rows: i64,
) -> Result<Option<Page>, StoreError> {
    let row = sqlx::query(sql::VERIFY_PAGE)
        .bind(after)
        .bind(page_rows)
        .fetch_one(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    let rows: i64 = row.try_get(0).map_err(map_sqlx)?;
    if rows == 0 {
        return Ok(None);
    }
    Ok(Some(Page {
        rows,
        last: row.try_get(1).map_err(map_sqlx)?,
        packed: row.try_get(2).map_err(map_sqlx)?,
    }))
}

/// Feeds one packed page to the verifier, stopping at the first break.
fn check_page(verifier: &mut ChainVerifier, mut packed: &[u8]) -> Result<(), StoreError> {
    while !packed.is_empty() && !verifier.broken() {
        let (row, rest) = next_row(packed)?;
        verifier.push_bytes(
            u64::try_from(row.seq).unwrap_or(0),
            row.body,
            row.hash,
            &row.columns,
        );
        packed = rest;
    }
    Ok(())
}

/// One row of a page, borrowed from it.
struct PackedRow<'a> {
    seq: i64,
    hash: &'a [u8],
    body: &'a [u8],
    columns: StoredColumns<'a>,
}

fn next_row(packed: &[u8]) -> Result<(PackedRow<'_>, &[u8]), StoreError> {
    let (seq, rest) = number(packed)?;
    let (at_ms, mut rest) = number(rest)?;
    // hash, kind, identity, task, grant_id, body; -1 is NULL.
    let mut lens = [None::<usize>; 6];
    for len in &mut lens {
        let (n, r) = number(rest)?;
        *len = match n {
            -1 => None,
            n => Some(usize::try_from(n).map_err(|_| framing())?),
        };
        rest = r;
    }
    let mut values = [None::<&[u8]>; 6];
    for (value, len) in values.iter_mut().zip(lens) {
        if let Some(len) = len {
            if rest.len() < len {
                return Err(framing());
            }
            let (v, r) = rest.split_at(len);
            *value = Some(v);
            rest = r;
        }
    }
    let [Some(hash), Some(kind), identity, task, grant_id, Some(body)] = values else {
        // The NOT NULL columns.
        return Err(framing());
    };
    let columns = StoredColumns {
        at_ms,
        kind,
        identity,
        task,
        grant_id,
    };
    let row = PackedRow {
        seq,
        hash,
        body,
        columns,
    };
    Ok((row, rest))
}

/// A decimal (possibly negative) followed by a comma.
fn number(input: &[u8]) -> Result<(i64, &[u8]), StoreError> {
    let end = input.iter().position(|&b| b == b',').ok_or_else(framing)?;
    let text = std::str::from_utf8(&input[..end]).map_err(|_| framing())?;
    let n = text.parse().map_err(|_| framing())?;
    Ok((n, &input[end + 1..]))
}

fn framing() -> StoreError {
    // Only SQLite builds the page, so this is a bug or a broken database, not tampering.
    StoreError::Corrupt("an audit page read for verification is malformed".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use mayfly_core::audit::{AuditColumn, AuditDraft, AuditKind, ChainBreak, GENESIS_HASH};
    use sqlx::SqlitePool;

    /// A chain of `n` entries in an `audit` table as the schema declares it; every third
    /// entry is filed under no task, identity or grant.
    async fn chain(n: u64) -> (SqlitePool, Option<(u64, String)>) {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::query(
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY NOT NULL, at_ms INTEGER NOT NULL, \
             kind TEXT NOT NULL, identity TEXT, task TEXT, grant_id TEXT, \
             body TEXT NOT NULL, hash TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let mut prev = GENESIS_HASH.to_string();
        let at = mayfly_core::now();
        for seq in 1..=n {
            let mut d = AuditDraft::new(AuditKind::GrantRejected, "operator")
                .detail(serde_json::json!({"n": seq, "text": "a,1,2,b"}));
            if seq % 3 != 0 {
                d.identity = Some(format!("id,{seq}"));
                d.task = Some(format!("t{seq}"));
                d.grant_id = Some(mayfly_core::Uuid::new_v4());
            }
            let e = d.seal(seq, at, &prev);
            sqlx::query(
                "INSERT INTO audit (seq, at_ms, kind, identity, task, grant_id, body, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(seq as i64)
            .bind(mayfly_core::to_unix_ms(e.at))
            .bind(e.kind.as_str())
            .bind(&e.identity)
            .bind(&e.task)
            .bind(e.grant_id.map(|g| g.to_string()))
            .bind(e.canonical_body())
            .bind(&e.hash)
            .execute(&pool)
            .await
            .unwrap();
            prev = e.hash;
        }
        (pool, (n > 0).then_some((n, prev)))
    }

    async fn walk(pool: &SqlitePool, head: Option<(u64, String)>, page: i64) -> VerifyReport {
        let mut tx = pool.begin().await.unwrap();
        verify_in_pages(&mut tx, head, page).await.unwrap()
    }

    async fn tamper(pool: &SqlitePool, statement: &str) {
        sqlx::query(statement).execute(pool).await.unwrap();
    }

    #[tokio::test]
    async fn an_intact_chain_verifies_across_pages_of_any_size() {
        for n in [0u64, 1, 6, 7, 8, 49, 50] {
            let (pool, head) = chain(n).await;
            for page in [1, 7, 16_384] {
                let report = walk(&pool, head.clone(), page).await;
                assert!(report.ok(), "n={n} page={page}: {report:?}");
                assert_eq!(report.entries, n);
                assert_eq!(report.last_seq, head.as_ref().map(|h| h.0));
            }
        }
    }

    #[tokio::test]
    async fn breaks_are_found_on_page_boundaries_and_inside_pages() {
        let (pool, head) = chain(50).await;
        tamper(&pool, "DELETE FROM audit WHERE seq = 15").await;
        assert_eq!(
            walk(&pool, head.clone(), 7).await.first_break,
            Some(ChainBreak::Deleted {
                seq: 16,
                missing_from: 15
            })
        );

        let (pool, head) = chain(50).await;
        tamper(
            &pool,
            "UPDATE audit SET body = replace(body, '\"n\":29', '\"n\":30') WHERE seq = 29",
        )
        .await;
        assert_eq!(
            walk(&pool, head.clone(), 7).await.first_break,
            Some(ChainBreak::Edited { seq: 29 })
        );

        let (pool, head) = chain(20).await;
        tamper(
            &pool,
            "INSERT INTO audit SELECT -5, at_ms, kind, identity, task, grant_id, body, hash \
             FROM audit WHERE seq = 3",
        )
        .await;
        assert_eq!(
            walk(&pool, head.clone(), 7).await.first_break,
            Some(ChainBreak::InsertedOrReordered { seq: 0 })
        );

        // Not text at all, and not UTF-8: still one precise break, no error.
        let (pool, head) = chain(20).await;
        tamper(&pool, "UPDATE audit SET body = X'FFFE2C31' WHERE seq = 9").await;
        assert_eq!(
            walk(&pool, head.clone(), 7).await.first_break,
            Some(ChainBreak::Edited { seq: 9 })
        );

        let (pool, head) = chain(21).await;
        tamper(&pool, "DELETE FROM audit WHERE seq > 14").await;
        assert_eq!(
            walk(&pool, head, 7).await.first_break,
            Some(ChainBreak::Truncated {
                head_seq: 21,
                last_seq: 14
            })
        );
    }

    #[tokio::test]
    async fn rewritten_columns_are_found_on_page_boundaries_and_inside_pages() {
        // Entry 14 ends a page of 7; 15 and 16 are inside the next one; 9 is never filed.
        for (statement, seq, column) in [
            (
                "UPDATE audit SET task = 't99' WHERE seq = 14",
                14,
                AuditColumn::Task,
            ),
            (
                "UPDATE audit SET task = NULL WHERE seq = 16",
                16,
                AuditColumn::Task,
            ),
            (
                "UPDATE audit SET task = 't9' WHERE seq = 9",
                9,
                AuditColumn::Task,
            ),
            (
                "UPDATE audit SET identity = 'id,16,' WHERE seq = 16",
                16,
                AuditColumn::Identity,
            ),
            (
                "UPDATE audit SET identity = X'FF2C2D31' WHERE seq = 15",
                15,
                AuditColumn::Identity,
            ),
            (
                "UPDATE audit SET grant_id = NULL WHERE seq = 14",
                14,
                AuditColumn::GrantId,
            ),
            (
                "UPDATE audit SET kind = 'lease.revoked' WHERE seq = 15",
                15,
                AuditColumn::Kind,
            ),
            (
                "UPDATE audit SET at_ms = at_ms - 1 WHERE seq = 16",
                16,
                AuditColumn::AtMs,
            ),
            (
                "UPDATE audit SET at_ms = 'soon' WHERE seq = 15",
                15,
                AuditColumn::AtMs,
            ),
        ] {
            let (pool, head) = chain(20).await;
            assert!(walk(&pool, head.clone(), 7).await.ok());
            tamper(&pool, statement).await;
            for page in [1, 7, 16_384] {
                assert_eq!(
                    walk(&pool, head.clone(), page).await.first_break,
                    Some(ChainBreak::ColumnEdited { seq, column }),
                    "{statement}, pages of {page}"
                );
            }
        }
    }

    type Packed<'a> = (i64, i64, &'a str, &'a str, &'a str, [Option<&'a str>; 3]);

    fn pack(rows: &[Packed]) -> Vec<u8> {
        let mut out = Vec::new();
        for (seq, at_ms, hash, body, kind, filed) in rows {
            let len = |v: &Option<&str>| v.map_or(-1, |v| v.len() as i64);
            out.extend_from_slice(
                format!(
                    "{seq},{at_ms},{},{},{},{},{},{},",
                    hash.len(),
                    kind.len(),
                    len(&filed[0]),
                    len(&filed[1]),
                    len(&filed[2]),
                    body.len(),
                )
                .as_bytes(),
            );
            let values = [Some(*hash), Some(*kind)]
                .into_iter()
                .chain(filed.iter().copied());
            for v in values.chain([Some(*body)]) {
                out.extend_from_slice(v.unwrap_or("").as_bytes());
            }
        }
        out
    }

    #[test]
    fn rows_split_exactly_whatever_they_contain() {
        let packed = pack(&[
            (
                1,
                5,
                "ab",
                "{\"x\":\",3,\"}",
                "k",
                [Some("i,1"), None, Some("")],
            ),
            (-2, -7, "", "", "", [None, Some("-1,"), None]),
        ]);
        let (row, rest) = next_row(&packed).unwrap();
        assert_eq!(
            (row.seq, row.hash, row.body),
            (1, &b"ab"[..], &b"{\"x\":\",3,\"}"[..])
        );
        let c = row.columns;
        assert_eq!((c.at_ms, c.kind), (5, &b"k"[..]));
        assert_eq!(
            (c.identity, c.task, c.grant_id),
            (Some(&b"i,1"[..]), None, Some(&b""[..]))
        );
        let (row, rest) = next_row(rest).unwrap();
        assert_eq!(
            (row.seq, row.hash, row.body, rest),
            (-2, &b""[..], &b""[..], &b""[..])
        );
        let c = row.columns;
        assert_eq!((c.at_ms, c.kind), (-7, &b""[..]));
        assert_eq!(
            (c.identity, c.task, c.grant_id),
            (None, Some(&b"-1,"[..]), None)
        );
    }

    #[test]
    fn a_short_page_is_an_error_not_a_panic() {
        let packed = pack(&[(1, 2, "ab", "body", "k", [Some("i"), None, Some("g")])]);
        for cut in 0..packed.len() {
            assert!(next_row(&packed[..cut]).is_err(), "cut at {cut}");
        }
        assert!(next_row(b"x,1,1,1,1,1,1,1,abcdef").is_err());
        assert!(next_row(b"1,1,-2,1,1,1,1,1,abcdef").is_err());
        // A NULL where the schema forbids one.
        assert!(next_row(b"1,1,-1,1,1,1,1,1,abcde").is_err());
    }
}
