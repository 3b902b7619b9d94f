//! Real PostgreSQL and MariaDB: the shared lifecycle suite (`common`) run for each engine.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust) and MariaDB on
//! 127.0.0.1:3306 (`root`, empty password). A service that is down is skipped with a
//! `SKIPPED:` line on stderr, or fails the run when `MAYFLY_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

macro_rules! suite {
    ($module:ident, $engine:ty) => {
        mod $module {
            use super::common;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lifecycle() {
                common::lifecycle::<$engine>().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent() {
                common::concurrent::<$engine>().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reconcile() {
                common::reconcile::<$engine>().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn passwords_travel_hashed() {
                common::passwords_travel_hashed::<$engine>().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rotate_root() {
                common::rotate_root::<$engine>().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn interrupted_rotation() {
                common::interrupted_rotation::<$engine>().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn target_down() {
                common::target_down::<$engine>().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn secrets_not_in_errors() {
                common::secrets_not_in_errors::<$engine>().await
            }
        }
    };
}

suite!(postgres, common::pg::Pg);
suite!(mariadb, common::mariadb::Maria);
