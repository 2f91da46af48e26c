//! Budgets behind the [`super::SharedState`] seam: the in-process ledger, or Redis
//! (integer micro-USD, one hash per caller per UTC day, reserve and settle in Lua).

use std::sync::Arc;

use super::budget_ledger::{Balance, BudgetLedger, LocalReservation, utc_day};
use super::redis_store::{RedisStore, StateKind};
use crate::config::FailMode;
use crate::error::Error;

/// Where budgets are kept.
pub enum Budgets {
    InProcess(BudgetLedger),
    /// Shared by every replica; `fallback` is used while Redis is unreachable and
    /// budgets fail open (each replica then holds the whole budget alone).
    Redis {
        store: Arc<RedisStore>,
        fallback: BudgetLedger,
    },
}

impl Default for Budgets {
    fn default() -> Self {
        Self::InProcess(BudgetLedger::default())
    }
}

/// Why a reservation was refused.
#[derive(Debug)]
pub enum BudgetRefusal {
    /// The call does not fit in what the caller has left today.
    Over(Balance),
    /// Redis did not answer and budgets fail closed.
    Unavailable(Error),
}

impl Budgets {
    /// Holds `amount_usd` of `caller`'s daily `budget_usd`, or says why it cannot.
    pub async fn reserve(
        &self,
        caller: &str,
        budget_usd: f64,
        amount_usd: f64,
    ) -> Result<Reservation, BudgetRefusal> {
        let (store, fallback) = match self {
            Self::InProcess(ledger) => {
                return ledger
                    .reserve(caller, budget_usd, amount_usd)
                    .map(|hold| Reservation(Hold::Local(hold)))
                    .map_err(BudgetRefusal::Over);
            }
            Self::Redis { store, fallback } => (store, fallback),
        };
        let key = store.budget_key(caller, utc_day());
        let amount_micro_usd = micro_usd(amount_usd);
        match store
            .reserve_budget(&key, micro_usd(budget_usd), amount_micro_usd)
            .await
        {
            Ok(verdict) if verdict.admitted => Ok(Reservation(Hold::Redis(RedisHold {
                store: Arc::clone(store),
                key,
                held_micro_usd: amount_micro_usd,
                settled: false,
            }))),
            Ok(verdict) => Err(BudgetRefusal::Over(Balance {
                spent_usd: usd(verdict.spent_micro_usd),
                reserved_usd: usd(verdict.reserved_micro_usd),
                budget_usd,
            })),
            Err(error) => match store.fail_mode(StateKind::Budgets) {
                FailMode::Open => fallback
                    .reserve(caller, budget_usd, amount_usd)
                    .map(|hold| Reservation(Hold::Local(hold)))
                    .map_err(BudgetRefusal::Over),
                FailMode::Closed => Err(BudgetRefusal::Unavailable(
                    store.unavailable(StateKind::Budgets, &error),
                )),
            },
        }
    }

    /// Spent today by `caller`, settled calls only, as this process holds it.
    pub fn spent_today(&self, caller: &str) -> f64 {
        match self {
            Self::InProcess(ledger)
            | Self::Redis {
                fallback: ledger, ..
            } => ledger.spent_today(caller),
        }
    }

    /// Today's (caller, spent, reserved) in USD held in this process: everything
    /// in process, the fallback's figures with Redis.
    pub fn today(&self) -> Vec<(String, f64, f64)> {
        match self {
            Self::InProcess(ledger)
            | Self::Redis {
                fallback: ledger, ..
            } => ledger.today(),
        }
    }
}

/// Money held for one call, wherever it is held. Dropping it unsettled charges the
/// whole hold; [`Reservation::release`] is for calls that were never answered.
#[derive(Debug)]
pub struct Reservation(Hold);

#[derive(Debug)]
enum Hold {
    Local(LocalReservation),
    Redis(RedisHold),
}

impl Reservation {
    pub fn amount_usd(&self) -> f64 {
        match &self.0 {
            Hold::Local(hold) => hold.amount_usd(),
            Hold::Redis(hold) => usd(hold.held_micro_usd),
        }
    }

    /// Replaces the hold by what the call really cost (in the background with
    /// Redis: the answer does not wait for the bookkeeping).
    pub fn settle(self, cost_usd: f64) {
        match self.0 {
            Hold::Local(hold) => hold.settle(cost_usd),
            Hold::Redis(mut hold) => {
                let cost = if cost_usd.is_finite() {
                    micro_usd(cost_usd.max(0.0))
                } else {
                    hold.held_micro_usd
                };
                hold.finish(cost);
            }
        }
    }

    /// The call cost nothing (it failed before the endpoint produced anything).
    pub fn release(self) {
        match self.0 {
            Hold::Local(hold) => hold.release(),
            Hold::Redis(mut hold) => hold.finish(0),
        }
    }
}

struct RedisHold {
    store: Arc<RedisStore>,
    key: String,
    held_micro_usd: i64,
    settled: bool,
}

impl std::fmt::Debug for RedisHold {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedisHold")
            .field("key", &self.key)
            .field("held_micro_usd", &self.held_micro_usd)
            .field("settled", &self.settled)
            .finish()
    }
}

impl RedisHold {
    /// Settles at `cost_micro_usd` on the current runtime, once.
    fn finish(&mut self, cost_micro_usd: i64) {
        if self.settled {
            return;
        }
        self.settled = true;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(key = %self.key, "no runtime to settle a budget hold on; it stays held until the key expires");
            return;
        };
        let (store, key, held) = (
            Arc::clone(&self.store),
            self.key.clone(),
            self.held_micro_usd,
        );
        runtime.spawn(async move {
            if let Err(error) = store.settle_budget(&key, held, cost_micro_usd).await {
                tracing::error!(%key, %error, held_micro_usd = held, cost_micro_usd, "could not settle a budget hold; it stays held until the key expires");
            }
        });
    }
}

impl Drop for RedisHold {
    fn drop(&mut self) {
        // A call whose end went unrecorded may have cost the whole hold.
        let held = self.held_micro_usd;
        self.finish(held);
    }
}

/// USD in whole micro-dollars, rounded to the nearest (prices are far coarser).
fn micro_usd(usd: f64) -> i64 {
    let micro = (usd * 1_000_000.0).round();
    if micro.is_finite() { micro as i64 } else { 0 }
}

fn usd(micro_usd: i64) -> f64 {
    micro_usd as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_usd_rounds_to_the_nearest_and_survives_nonsense() {
        assert_eq!(micro_usd(0.001), 1_000);
        assert_eq!(micro_usd(100.0 * 10.0 / 1e6), 1_000);
        assert_eq!(micro_usd(f64::NAN), 0);
        assert_eq!(usd(1_500_000), 1.5);
    }

    #[tokio::test]
    async fn in_process_budgets_keep_the_ledger_semantics() {
        let budgets = Budgets::default();
        let first = budgets.reserve("a", 1.0, 0.6).await.unwrap();
        assert!(matches!(
            budgets.reserve("a", 1.0, 0.6).await,
            Err(BudgetRefusal::Over(balance)) if balance.reserved_usd == 0.6
        ));
        first.settle(0.1);
        let second = budgets.reserve("a", 1.0, 0.6).await.unwrap();
        second.release();
        assert_eq!(budgets.today().len(), 1);
    }
}
