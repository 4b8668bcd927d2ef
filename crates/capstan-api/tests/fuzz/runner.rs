//! A proptest driver with a case count or a time budget from the environment, printing one
//! `FUZZ target=.. cases=.. seconds=.. panics=.. result=..` line per target for scripts/fuzz.sh.
//!
//! - `CAPSTAN_FUZZ_CASES`: cases per batch (default 256, so plain `cargo test` stays fast).
//! - `CAPSTAN_FUZZ_SECONDS`: keep running batches until this many seconds have passed.
//! - `CAPSTAN_FUZZ_SEED`: the first batch's seed (default: from the clock), to replay a run.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DEFAULT_CASES: u32 = 256;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn seed_bytes(seed: u64, batch: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&seed.to_le_bytes());
    out[8..16].copy_from_slice(&batch.to_le_bytes());
    out[16..24].copy_from_slice(b"capstan!");
    out
}

/// Runs `test` on values of `strategy` until the case count or the time budget is spent.
/// A panic inside `test` (or a failed property) is shrunk to a minimal input and fails the
/// calling test after the budget, with every distinct failure listed.
pub fn fuzz<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = env_u64("CAPSTAN_FUZZ_CASES")
        .map(|c| c.clamp(1, u64::from(u32::MAX)) as u32)
        .unwrap_or(DEFAULT_CASES);
    let budget = env_u64("CAPSTAN_FUZZ_SECONDS").map(Duration::from_secs);
    let seed = env_u64("CAPSTAN_FUZZ_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let start = Instant::now();
    let ran = Cell::new(0u64);
    let mut failures: Vec<String> = Vec::new();
    // Each batch is a fresh runner; a bound keeps the loop finite even with a zero budget.
    for batch in 0..u64::MAX {
        let mut config = Config::with_cases(cases);
        config.failure_persistence = None;
        config.max_shrink_iters = 2048;
        config.max_shrink_time = 20_000;
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed, batch));
        let mut runner = TestRunner::new_with_rng(config, rng);
        let result = runner.run(&strategy, |v| {
            ran.set(ran.get() + 1);
            run_quietly(|| test(v))
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, value)) => {
                let report = format!("seed {seed} batch {batch}: {why}\nminimal input: {value:?}");
                if !failures.iter().any(|f| f.contains(why.message())) {
                    failures.push(report);
                }
            }
            Err(TestError::Abort(why)) => {
                failures.push(format!("seed {seed} batch {batch}: aborted: {why}"))
            }
        }
        let out_of_time = budget.is_none_or(|b| start.elapsed() >= b);
        // Without a budget one batch is the whole run; with one, a failure does not stop it.
        if out_of_time || (budget.is_none() && !failures.is_empty()) {
            break;
        }
    }
    println!(
        "FUZZ target={name} cases={} seconds={:.1} panics={} result={}",
        ran.get(),
        start.elapsed().as_secs_f64(),
        failures.len(),
        if failures.is_empty() { "ok" } else { "FAILED" }
    );
    assert!(
        failures.is_empty(),
        "fuzz target {name} found {} failure(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

thread_local! {
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs one case; a panic becomes a failure carrying its message and location, without the
/// default hook's output (shrinking panics hundreds of times).
fn run_quietly(case: impl FnOnce() -> Result<(), TestCaseError>) -> Result<(), TestCaseError> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
            } else {
                default(info);
            }
        }));
    });
    IN_CASE.with(|c| c.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(case));
    IN_CASE.with(|c| c.set(false));
    result.unwrap_or_else(|_| {
        let msg = LAST_PANIC.with(|p| p.take());
        Err(TestCaseError::fail(format!("PANIC {msg}")))
    })
}

/// Fails the case with `msg` unless `cond` holds (prop_assert! without the macro's formatting).
pub fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(msg()))
    }
}
