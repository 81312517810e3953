//! selftest: checks the kernel's Xen-facing parts against the real hypervisor, one
//! line per check, then one result line, `Test result: SUCCESS` or `FAILURE`.
//!
//! Event channels and grants are tested in loopback: the guest binds a port to one it
//! allocated itself, and maps a page it granted to itself, so no second domain is
//! needed and the test also runs as dom0. The Xenstore checks need a domU; as dom0
//! they are skipped.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;

use arch::mm::{PAGE_SIZE, va_of_pfn};
use kernel::events::{EventChannel, own_domid};
use kernel::executor::{after, block_on, sleep, spawn, timeout};
use kernel::grant::{self, ForeignMapping, GrantError};
use kernel::shutdown::ShutdownReason;
use kernel::time::Instant;
use kernel::xenstore::{self, Watch, Xs};
use kernel::{mem, println};
use xenproto::shared;
use xenproto::xenstore::XsError;

kernel::main!(main);

/// `Err(None)`: skipped; `Err(Some(why))`: failed.
type Check = Result<(), Option<String>>;

/// A named check.
type NamedCheck = (&'static str, fn() -> Check);

fn main(_args: kernel::Args) -> ShutdownReason {
    let checks: [NamedCheck; 9] = [
        ("event channel loopback", event_loopback),
        ("event handler, mask and unmask", event_handler_and_mask),
        ("timers wake tasks in deadline order", timers_in_order),
        ("sleep keeps time", sleep_keeps_time),
        ("grant self-map, revoke while mapped", grant_self_map),
        ("frames come back", frames_come_back),
        ("wall clock", wall_clock),
        ("xenstore read, write, directory, rm", xenstore_basics),
        (
            "xenstore transaction and watch",
            xenstore_transaction_and_watch,
        ),
    ];
    let mut failed = 0;
    for (name, check) in checks {
        match check() {
            Ok(()) => println!("ok   {name}"),
            Err(None) => println!("skip {name}"),
            Err(Some(why)) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
        }
    }
    if failed == 0 {
        println!("Test result: SUCCESS");
        ShutdownReason::Poweroff
    } else {
        println!("Test result: FAILURE ({failed} failed)");
        ShutdownReason::Crash
    }
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(Some(what())) }
}

fn fail(why: String) -> Option<String> {
    Some(why)
}

fn loopback_pair() -> Result<(EventChannel, EventChannel), Option<String>> {
    let me = own_domid().map_err(|e| fail(format!("own domid: {e}")))?;
    let a = EventChannel::alloc_unbound(me).map_err(|e| fail(format!("alloc_unbound: {e}")))?;
    let b = EventChannel::bind_interdomain(me, a.port())
        .map_err(|e| fail(format!("bind_interdomain: {e}")))?;
    Ok((a, b))
}

fn event_loopback() -> Check {
    let (a, b) = loopback_pair()?;
    for round in 0..3 {
        b.notify().map_err(|e| fail(format!("notify: {e}")))?;
        block_on(timeout(Duration::from_secs(1), a.wait())).map_err(|_| {
            fail(format!(
                "round {round}: no event on port {} within 1 s",
                a.port()
            ))
        })?;
    }
    // And the other way round.
    a.notify().map_err(|e| fail(format!("notify: {e}")))?;
    block_on(timeout(Duration::from_secs(1), b.wait()))
        .map_err(|_| fail("no event in reverse direction".to_string()))
}

static HANDLED: AtomicU32 = AtomicU32::new(0);

fn count(_port: kernel::events::Port) {
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

fn event_handler_and_mask() -> Check {
    let (a, b) = loopback_pair()?;
    a.set_handler(count);
    let settle = || sleep(Duration::from_millis(20));
    b.notify().map_err(|e| fail(format!("notify: {e}")))?;
    settle();
    ensure(HANDLED.load(Ordering::Relaxed) == 1, || {
        format!(
            "handler ran {} times, not once",
            HANDLED.load(Ordering::Relaxed)
        )
    })?;
    a.mask();
    b.notify().map_err(|e| fail(format!("notify: {e}")))?;
    settle();
    ensure(HANDLED.load(Ordering::Relaxed) == 1, || {
        "handler ran while the port was masked".to_string()
    })?;
    a.unmask().map_err(|e| fail(format!("unmask: {e}")))?;
    settle();
    ensure(HANDLED.load(Ordering::Relaxed) == 2, || {
        "the event sent while masked was lost on unmask".to_string()
    })
}

fn timers_in_order() -> Check {
    static ORDER: spin::Mutex<Vec<u64>> = spin::Mutex::new(Vec::new());
    for ms in [30u64, 10, 20] {
        spawn(async move {
            after(Duration::from_millis(ms)).await;
            ORDER.lock().push(ms);
        });
    }
    sleep(Duration::from_millis(60));
    let order = ORDER.lock().clone();
    ensure(order == [10, 20, 30], || {
        format!("tasks finished in order {order:?}")
    })
}

fn sleep_keeps_time() -> Check {
    let start = Instant::now();
    sleep(Duration::from_millis(100));
    let slept = start.elapsed();
    // Under emulation a wake-up can be late; it must never be early.
    ensure(
        slept >= Duration::from_millis(100) && slept < Duration::from_millis(1000),
        || format!("slept {slept:?} for 100 ms"),
    )
}

fn grant_self_map() -> Check {
    let me = own_domid().map_err(|e| fail(format!("own domid: {e}")))?;
    let pfn = mem::alloc_frame().ok_or_else(|| fail("no free frame".to_string()))?;
    let page = core::ptr::NonNull::new(va_of_pfn(pfn).as_mut_ptr::<u64>()).expect("mapped");
    // SAFETY: the frame is ours and mapped in the direct map.
    unsafe { shared::write(page, 0x5eed_cafe) };
    let free_before = grant::free_refs();
    let gref = grant::grant_access(me, pfn, false).map_err(|e| fail(format!("grant: {e}")))?;
    let result = (|| {
        let mapping =
            ForeignMapping::map(me, gref, false).map_err(|e| fail(format!("map: {e}")))?;
        let seen = mapping.as_non_null().cast::<u64>();
        // SAFETY: the mapping is live and a page long.
        let value = unsafe { shared::read(seen) };
        ensure(value == 0x5eed_cafe, || format!("mapping reads {value:#x}"))?;
        // SAFETY: as above; the grant is writable.
        unsafe { shared::write(seen.add(PAGE_SIZE / 8 - 1), 7) };
        // SAFETY: the frame is ours.
        let back = unsafe { shared::read(page.add(PAGE_SIZE / 8 - 1)) };
        ensure(back == 7, || {
            "write through the mapping did not reach the frame".to_string()
        })?;
        ensure(grant::is_mapped_by_peer(gref), || {
            "Xen does not mark the grant in use".to_string()
        })?;
        ensure(
            grant::end_access(gref) == Err(GrantError::InUse(gref)),
            || "revoked a grant that is mapped".to_string(),
        )?;
        drop(mapping);
        grant::end_access(gref).map_err(|e| fail(format!("revoke after unmap: {e}")))
    })();
    if result.is_err() {
        let _ = grant::end_access(gref);
    }
    mem::free_frame(pfn);
    result?;
    ensure(grant::free_refs() == free_before, || {
        "grant reference leaked".to_string()
    })
}

fn frames_come_back() -> Check {
    let before = mem::free_frames();
    let frames: Vec<u64> = (0..64).map_while(|_| mem::alloc_frame()).collect();
    ensure(frames.len() == 64, || {
        format!("only {} frames", frames.len())
    })?;
    let mut distinct = frames.clone();
    distinct.sort_unstable();
    distinct.dedup();
    ensure(distinct.len() == 64, || {
        "a frame was handed out twice".to_string()
    })?;
    frames.into_iter().for_each(mem::free_frame);
    ensure(mem::free_frames() == before, || {
        format!("{before} free before, {} after", mem::free_frames())
    })
}

fn wall_clock() -> Check {
    let now = kernel::time::utc_now();
    let civil = now.civil();
    ensure(civil.year >= 2024, || format!("UTC says {now}"))?;
    let a = kernel::time::utc_now();
    sleep(Duration::from_millis(10));
    let b = kernel::time::utc_now();
    ensure(b > a, || {
        format!("wall clock did not advance: {a} then {b}")
    })
}

/// Run a Xenstore check; skipped where there is no Xenstore (dom0 smoke tests).
fn with_xenstore(check: impl AsyncFnOnce() -> Result<(), xenstore::Error>) -> Check {
    match block_on(check()) {
        Ok(()) => Ok(()),
        Err(xenstore::Error::Unavailable) => Err(None),
        Err(err) => Err(fail(err.to_string())),
    }
}

fn xenstore_basics() -> Check {
    with_xenstore(async || {
        let xs = Xs::NONE;
        let me = own_domid().map_err(|_| xenstore::Error::Unavailable)?;
        let domid = xs.read("domid").await?;
        if domid != me.to_string() {
            return Err(xenstore::Error::Xs(XsError::Other(format!(
                "domid node says {domid}, Xen says {me}"
            ))));
        }
        xs.write("data/selftest/a", "1").await?;
        xs.write("data/selftest/b", "two words").await?;
        let mut names = xs.directory("data/selftest").await?;
        names.sort();
        let value = xs.read("data/selftest/b").await?;
        if names != ["a", "b"] || value != "two words" {
            return Err(xenstore::Error::Xs(XsError::Other(format!(
                "read back {names:?} {value:?}"
            ))));
        }
        xs.rm("data/selftest").await?;
        match xs.try_read("data/selftest/a").await? {
            None => Ok(()),
            Some(v) => Err(xenstore::Error::Xs(XsError::Other(format!(
                "rm left a = {v}"
            )))),
        }
    })
}

fn xenstore_transaction_and_watch() -> Check {
    with_xenstore(async || {
        let watch = Watch::new("data/watched").await?;
        // The first event comes at once, for the watch itself.
        timeout(Duration::from_secs(2), watch.next())
            .await
            .map_err(|_| elapsed("initial watch event"))??;
        let written = xenstore::transaction(async |tx| {
            tx.write("data/watched/x", "1").await?;
            tx.write("data/watched/y", "2").await?;
            tx.read("data/watched/x").await
        })
        .await?;
        let path = timeout(Duration::from_secs(2), watch.next())
            .await
            .map_err(|_| elapsed("watch event"))??;
        let xs = Xs::NONE;
        let y = xs.read("data/watched/y").await?;
        xs.rm("data/watched").await?;
        if written != "1" || y != "2" || !path.contains("data/watched") {
            return Err(xenstore::Error::Xs(XsError::Other(format!(
                "tx read {written:?}, y {y:?}, event {path:?}"
            ))));
        }
        Ok(())
    })
}

fn elapsed(what: &str) -> xenstore::Error {
    xenstore::Error::Xs(XsError::Other(format!("no {what} within 2 s")))
}
