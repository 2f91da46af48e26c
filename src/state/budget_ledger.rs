//! Per-caller daily budgets with reservation, in process: a call reserves the most
//! it can cost before it is sent and settles the real cost when it ends, so
//! concurrent calls cannot together spend past the budget. The default, and what a
//! replica falls back to when Redis is unreachable and budgets fail open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY_SECONDS: u64 = 86_400;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Account {
    /// Days since the Unix epoch (UTC) these figures are for.
    day: u64,
    spent_usd: f64,
    reserved_usd: f64,
}

#[derive(Debug, Default)]
pub struct BudgetLedger {
    accounts: Arc<Mutex<HashMap<String, Account>>>,
}

/// Money held for one call. Dropping it unsettled charges the whole hold (a
/// call whose end went unrecorded, say a panicking task, may have cost that
/// much); [`LocalReservation::release`] is for calls that were never answered.
#[derive(Debug)]
pub struct LocalReservation {
    accounts: Arc<Mutex<HashMap<String, Account>>>,
    caller: String,
    day: u64,
    amount_usd: f64,
    settled: bool,
}

/// What a caller has left today.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    pub spent_usd: f64,
    pub reserved_usd: f64,
    pub budget_usd: f64,
}

impl BudgetLedger {
    /// Holds `amount_usd` of `caller`'s daily budget, or says why it cannot.
    pub fn reserve(
        &self,
        caller: &str,
        budget_usd: f64,
        amount_usd: f64,
    ) -> Result<LocalReservation, Balance> {
        let day = today();
        let mut accounts = lock(&self.accounts);
        let account = accounts.entry(caller.to_string()).or_default();
        if account.day != day {
            // A new day: yesterday's spending no longer counts; calls still out
            // settle against the day they reserved on.
            *account = Account {
                day,
                ..Account::default()
            };
        }
        if account.spent_usd + account.reserved_usd + amount_usd > budget_usd {
            return Err(Balance {
                spent_usd: account.spent_usd,
                reserved_usd: account.reserved_usd,
                budget_usd,
            });
        }
        account.reserved_usd += amount_usd;
        Ok(LocalReservation {
            accounts: self.accounts.clone(),
            caller: caller.to_string(),
            day,
            amount_usd,
            settled: false,
        })
    }

    /// Every caller with an account today: (caller, spent, reserved) in USD.
    pub fn today(&self) -> Vec<(String, f64, f64)> {
        let day = today();
        lock(&self.accounts)
            .iter()
            .filter(|(_, account)| account.day == day)
            .map(|(caller, account)| (caller.clone(), account.spent_usd, account.reserved_usd))
            .collect()
    }

    /// Spent today, settled calls only.
    pub fn spent_today(&self, caller: &str) -> f64 {
        let day = today();
        lock(&self.accounts)
            .get(caller)
            .filter(|account| account.day == day)
            .map_or(0.0, |account| account.spent_usd)
    }
}

impl LocalReservation {
    pub fn amount_usd(&self) -> f64 {
        self.amount_usd
    }

    /// Replaces the hold by what the call really cost (which may exceed the hold
    /// when usage was estimated low: the spend is recorded as it was).
    pub fn settle(mut self, cost_usd: f64) {
        self.finish(cost_usd);
    }

    /// The call cost nothing (it failed before the endpoint produced anything).
    pub fn release(mut self) {
        self.finish(0.0);
    }

    fn finish(&mut self, cost_usd: f64) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut accounts = lock(&self.accounts);
        // A cost that is not a number (a broken price or usage) counts as the hold.
        let cost_usd = if cost_usd.is_finite() {
            cost_usd.max(0.0)
        } else {
            self.amount_usd
        };
        if let Some(account) = accounts.get_mut(&self.caller)
            && account.day == self.day
        {
            account.reserved_usd = (account.reserved_usd - self.amount_usd).max(0.0);
            account.spent_usd += cost_usd;
        }
    }
}

impl Drop for LocalReservation {
    fn drop(&mut self) {
        self.finish(self.amount_usd);
    }
}

/// Time until the budgets start a new day, for the retry hint.
pub fn until_next_day() -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Duration::from_secs(DAY_SECONDS - now % DAY_SECONDS)
}

/// Days since the Unix epoch (UTC): the day a reservation counts against.
pub fn utc_day() -> u64 {
    today()
}

fn today() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / DAY_SECONDS
}

fn lock(
    accounts: &Mutex<HashMap<String, Account>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Account>> {
    // Plain numbers: a panic elsewhere cannot leave them half-written.
    accounts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_hold_money_until_settled_or_dropped() {
        let ledger = BudgetLedger::default();
        let first = ledger.reserve("a", 1.0, 0.6).unwrap();
        let refused = ledger.reserve("a", 1.0, 0.6).unwrap_err();
        assert_eq!(refused.reserved_usd, 0.6);
        first.settle(0.1);
        assert!((ledger.spent_today("a") - 0.1).abs() < 1e-12);
        let second = ledger.reserve("a", 1.0, 0.6).expect("0.1 spent, 0.6 fits");
        second.release();
        assert!((ledger.spent_today("a") - 0.1).abs() < 1e-12, "released");
        let lost = ledger.reserve("a", 1.0, 0.6).unwrap();
        drop(lost);
        assert!(
            (ledger.spent_today("a") - 0.7).abs() < 1e-12,
            "a hold dropped unsettled is charged whole, not $0"
        );
        assert!(
            ledger.reserve("b", 1.0, 0.9).is_ok(),
            "callers are separate"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_cannot_reserve_past_the_budget() {
        let ledger = Arc::new(BudgetLedger::default());
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let held = ledger.reserve("a", 1.0, 0.05);
                tokio::task::yield_now().await;
                held.map(|reservation| reservation.settle(0.05)).is_ok()
            }));
        }
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.unwrap());
        }
        assert!(admitted <= 20, "{admitted} calls of $0.05 fit in $1");
        assert!(ledger.spent_today("a") <= 1.0 + 1e-9);
    }
}
