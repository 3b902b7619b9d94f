//! `verify_audit` for SQLite: the chain read in pages, each page checked on a blocking
//! thread while the next one is read.
//!
//! Reading rows one at a time costs a thread hand-off per entry inside sqlx, which capped
//! a walk at a few hundred thousand entries per second; hashing is several times faster
//! than that. Pages of [`PAGE`] rows arrive as one packed value (see
//! [`super::sql::VERIFY_PAGE`]), and reading page *n + 1* overlaps checking page *n*.
//! Memory stays bounded by two pages however long the chain is.

use mayfly_core::audit::{ChainVerifier, VerifyReport};
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
        let (seq, hash, body, rest) = next_row(packed)?;
        verifier.push_bytes(u64::try_from(seq).unwrap_or(0), body, hash);
        packed = rest;
    }
    Ok(())
}

type PackedRow<'a> = (i64, &'a [u8], &'a [u8], &'a [u8]);

fn next_row(packed: &[u8]) -> Result<PackedRow<'_>, StoreError> {
    let (seq, rest) = number(packed)?;
    let (hash_len, rest) = number(rest)?;
    let (body_len, rest) = number(rest)?;
    let hash_len = usize::try_from(hash_len).map_err(|_| framing())?;
    let body_len = usize::try_from(body_len).map_err(|_| framing())?;
    if rest.len() < hash_len + body_len {
        return Err(framing());
    }
    let (hash, rest) = rest.split_at(hash_len);
    let (body, rest) = rest.split_at(body_len);
    Ok((seq, hash, body, rest))
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
    use mayfly_core::audit::{AuditDraft, AuditKind, ChainBreak, GENESIS_HASH};
    use sqlx::SqlitePool;

    /// A chain of `n` entries in a bare `audit` table (the columns the walk reads).
    async fn chain(n: u64) -> (SqlitePool, Option<(u64, String)>) {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE audit (seq INTEGER PRIMARY KEY NOT NULL, body TEXT NOT NULL, hash TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        let mut prev = GENESIS_HASH.to_string();
        let at = mayfly_core::now();
        for seq in 1..=n {
            let e = AuditDraft::new(AuditKind::GrantRejected, "operator")
                .detail(serde_json::json!({"n": seq, "text": "a,1,2,b"}))
                .seal(seq, at, &prev);
            sqlx::query("INSERT INTO audit (seq, body, hash) VALUES (?1, ?2, ?3)")
                .bind(seq as i64)
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
            "INSERT INTO audit (seq, body, hash) SELECT -5, body, hash FROM audit WHERE seq = 3",
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

    fn pack(rows: &[(i64, &str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (seq, hash, body) in rows {
            out.extend_from_slice(format!("{seq},{},{},", hash.len(), body.len()).as_bytes());
            out.extend_from_slice(hash.as_bytes());
            out.extend_from_slice(body.as_bytes());
        }
        out
    }

    #[test]
    fn rows_split_exactly_whatever_they_contain() {
        let packed = pack(&[(1, "ab", "{\"x\":\",3,\"}"), (-2, "", "")]);
        let (seq, hash, body, rest) = next_row(&packed).unwrap();
        assert_eq!((seq, hash, body), (1, &b"ab"[..], &b"{\"x\":\",3,\"}"[..]));
        let (seq, hash, body, rest) = next_row(rest).unwrap();
        assert_eq!((seq, hash, body, rest), (-2, &b""[..], &b""[..], &b""[..]));
    }

    #[test]
    fn a_short_page_is_an_error_not_a_panic() {
        let packed = pack(&[(1, "ab", "body")]);
        for cut in 0..packed.len() {
            assert!(next_row(&packed[..cut]).is_err(), "cut at {cut}");
        }
        assert!(next_row(b"x,1,1,ab").is_err());
        assert!(next_row(b"1,-1,1,ab").is_err());
    }
}
