//! blkcheck: checks the guest's first disk end to end and prints one result line,
//! `blkcheck: ok …` or `blkcheck: FAIL …`.
//!
//! 1. Writes a pattern to regions of many offsets and sizes (single sectors, runs
//!    across page boundaries, exactly 11 segments, more than 11, 1 MiB, the last
//!    sectors of the disk), flushes, reads every region back and verifies it.
//! 2. Measures sequential write and read throughput and 4 KiB random-read IOPS.
//!
//! Every sector S it writes holds 64 little-endian u64 words, word i being
//! `((S << 16) | i) ^ 0xb10c_c4ec_0000_0000`, so a check outside the guest can verify
//! the image file (`cargo xtask test` reads sectors 0, 1, 7, 8, 2048, 65535 and the
//! last one). On a read-only disk it verifies that reading works and that a write is
//! refused with an error, without crashing.
//!
//! With `rounds=N` it writes and verifies the regions N times, each round with its own
//! pattern (the last with the one above) and a `blkcheck: round K of N verified` line:
//! a run long enough to be saved, restored or migrated in the middle.
//!
//! With `hog=S` on its command line it does only this instead: for S seconds it writes
//! its disk 1 MiB at a time, each write flushed, from 16 tasks at once, and prints
//! `blkcheck: hog wrote N MiB in S s` — the neighbour the back end must not let starve
//! other guests.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use core::cell::Cell;
use core::time::Duration;

use blkfront::{BlockDevice, SECTOR_SIZE};
use kernel::executor::{block_on, spawn};
use kernel::println;
use kernel::time::Instant;

kernel::main!(main);

/// The pattern's constant.
const MAGIC: u64 = 0xb10c_c4ec_0000_0000;

/// The 512 bytes blkcheck writes to sector `sector` in round `round` (each round's
/// differ, so a write lost in one shows in the next; the last round is round 0).
fn sector_pattern(sector: u64, round: u64, out: &mut [u8]) {
    let magic = MAGIC ^ (round << 32);
    for (i, word) in out.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&(((sector << 16) | i as u64) ^ magic).to_le_bytes());
    }
}

fn fill(first_sector: u64, round: u64, buf: &mut [u8]) {
    for (i, sector) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
        sector_pattern(first_sector + i as u64, round, sector);
    }
}

/// The first sector that differs from the pattern, if any.
fn first_mismatch(first_sector: u64, round: u64, buf: &[u8]) -> Option<u64> {
    let mut expected = [0u8; SECTOR_SIZE];
    buf.chunks_exact(SECTOR_SIZE)
        .enumerate()
        .find_map(|(i, got)| {
            let sector = first_sector + i as u64;
            sector_pattern(sector, round, &mut expected);
            (got != expected).then_some(sector)
        })
}

fn main(args: kernel::Args) -> Result<(), String> {
    let hog = match args.value("hog") {
        Some(seconds) => Some(
            seconds
                .parse::<u64>()
                .map_err(|_| format!("blkcheck: hog={seconds}: whole seconds expected"))?,
        ),
        None => None,
    };
    let rounds = match args.value("rounds") {
        Some(text) => match text.parse::<u64>() {
            Ok(rounds) if rounds > 0 => rounds,
            _ => {
                return Err(format!(
                    "blkcheck: rounds={text}: a positive number expected"
                ));
            }
        },
        None => 1,
    };
    block_on(async {
        // Poweroff and reboot end the run; suspend (save, migration) happens under it.
        sysctl::spawn_default();
        let mut disks = BlockDevice::probe_all().await;
        if disks.is_empty() {
            return Err(String::from(
                "blkcheck: FAIL: no disk (is there a vbd in the domain config?)",
            ));
        }
        let disk = Rc::new(disks.remove(0));
        if let Some(seconds) = hog {
            return hog_for(&disk, Duration::from_secs(seconds)).await;
        }
        let info = disk.info();
        println!(
            "blkcheck: disk {} of {} MiB, {}-byte sectors, {}, flush {}, indirect segments {}",
            disk.name(),
            info.bytes() >> 20,
            info.sector_size,
            if info.readonly {
                "read-only"
            } else {
                "read-write"
            },
            if info.flush { "yes" } else { "no" },
            info.max_indirect_segments
        );
        let result = if info.readonly {
            check_read_only(&disk).await
        } else {
            check(&disk, rounds).await
        };
        match result {
            Ok(summary) => {
                println!("blkcheck: ok disk={} {summary}", disk.name());
                Ok(())
            }
            Err(why) => Err(format!("blkcheck: FAIL {why}")),
        }
    })
}

/// Write the disk 1 MiB at a time, flushing each, from 16 tasks, for `duration`.
async fn hog_for(disk: &Rc<BlockDevice>, duration: Duration) -> Result<(), String> {
    const CHUNK: usize = 1 << 20;
    const TASKS: u64 = 16;
    let chunks = (disk.info().bytes() / CHUNK as u64).max(1);
    let written = Rc::new(Cell::new(0u64));
    let failures = Rc::new(Cell::new(0u32));
    let done = Rc::new(Cell::new(0u64));
    let start = Instant::now();
    for task in 0..TASKS {
        let (disk, written, failures, done) = (
            disk.clone(),
            written.clone(),
            failures.clone(),
            done.clone(),
        );
        spawn(async move {
            let buf = vec![task as u8; CHUNK];
            let mut chunk = task;
            while start.elapsed() < duration && failures.get() == 0 {
                let sector = (chunk % chunks) * (CHUNK / SECTOR_SIZE) as u64;
                if disk.write(sector, &buf).await.is_err() || disk.flush().await.is_err() {
                    failures.set(failures.get() + 1);
                }
                written.set(written.get() + 1);
                chunk += TASKS;
            }
            done.set(done.get() + 1);
        });
    }
    wait_until(|| done.get() == TASKS).await;
    if failures.get() > 0 {
        return Err(format!(
            "blkcheck: FAIL hog: {} writes failed",
            failures.get()
        ));
    }
    println!(
        "blkcheck: hog wrote {} MiB in {} s",
        written.get(),
        start.elapsed().as_secs()
    );
    Ok(())
}

async fn check(disk: &Rc<BlockDevice>, rounds: u64) -> Result<String, String> {
    let sectors = disk.info().bytes() / SECTOR_SIZE as u64;
    if sectors < 2 * 65536 {
        return Err(format!(
            "the disk has {sectors} sectors; blkcheck needs at least 64 MiB"
        ));
    }
    let last = sectors - 1;
    // (first sector, sectors): single sectors, page crossings, 11 and 12 pages, 1 MiB,
    // the sectors a host-side check reads, the end of the disk.
    let regions: [(u64, u64); 14] = [
        (0, 1),
        (1, 1),
        (7, 2),
        (2048, 24),
        (4095, 3),
        (5000, 9),
        (6001, 255),
        (10000, 88),
        (20000, 96),
        (30001, 2048),
        (40000, 1),
        (65535, 1),
        (last - 2047, 1024),
        (last, 1),
    ];
    let mut written = 0;
    for round in (0..rounds).rev() {
        for &(sector, count) in &regions {
            let mut buf = vec![0u8; (count as usize) * SECTOR_SIZE];
            fill(sector, round, &mut buf);
            disk.write(sector, &buf)
                .await
                .map_err(|e| format!("write {count} sectors at {sector}: {e}"))?;
            written += count;
        }
        disk.flush().await.map_err(|e| format!("flush: {e}"))?;
        for &(sector, count) in &regions {
            let mut buf = vec![0u8; (count as usize) * SECTOR_SIZE];
            disk.read(sector, &mut buf)
                .await
                .map_err(|e| format!("read {count} sectors at {sector}: {e}"))?;
            if let Some(bad) = first_mismatch(sector, round, &buf) {
                return Err(format!(
                    "sector {bad} read back differs from what was written (round {round})"
                ));
            }
        }
        if rounds > 1 {
            println!("blkcheck: round {} of {rounds} verified", rounds - round);
        }
    }
    // Out of range and unaligned requests are refused before reaching the back end.
    if disk.read(last, &mut [0u8; 1024]).await.is_ok()
        || disk.read(0, &mut [0u8; 100]).await.is_ok()
    {
        return Err(String::from(
            "an I/O past the end or of part of a sector was not refused",
        ));
    }

    // Throughput: a region of the disk that the checks above do not use.
    let region = (sectors / 4, (sectors / 8).min(16 << 11));
    let write = sequential(disk, region, true).await?;
    let read = sequential(disk, region, false).await?;
    let iops = random_reads(disk, sectors, Duration::from_secs(2)).await?;
    Ok(format!(
        "regions={} sectors={written} seq_write={:.1}MB/s seq_read={:.1}MB/s rand_read_4k={iops:.0}IOPS",
        regions.len(),
        write,
        read
    ))
}

/// Sectors per I/O and I/Os in flight for the sequential runs.
const SEQ_IO_SECTORS: u64 = 256;
const SEQ_QUEUE_DEPTH: u64 = 4;

/// Write (with the pattern) or read `region` in 128 KiB I/Os, several in flight.
/// Returns MB/s.
async fn sequential(
    disk: &Rc<BlockDevice>,
    (start, count): (u64, u64),
    write: bool,
) -> Result<f64, String> {
    let began = Instant::now();
    let failures = Rc::new(Cell::new(0u32));
    let done = Rc::new(Cell::new(0u64));
    for lane in 0..SEQ_QUEUE_DEPTH {
        let (disk, failures, done) = (disk.clone(), failures.clone(), done.clone());
        spawn(async move {
            let mut buf = vec![0u8; (SEQ_IO_SECTORS as usize) * SECTOR_SIZE];
            let mut sector = start + lane * SEQ_IO_SECTORS;
            while sector + SEQ_IO_SECTORS <= start + count {
                let result = if write {
                    fill(sector, 0, &mut buf);
                    disk.write(sector, &buf).await
                } else {
                    disk.read(sector, &mut buf).await
                };
                if result.is_err() || (!write && first_mismatch(sector, 0, &buf).is_some()) {
                    failures.set(failures.get() + 1);
                }
                sector += SEQ_QUEUE_DEPTH * SEQ_IO_SECTORS;
            }
            done.set(done.get() + 1);
        });
    }
    wait_until(|| done.get() == SEQ_QUEUE_DEPTH).await;
    if failures.get() > 0 {
        let what = if write { "writing" } else { "reading back" };
        return Err(format!(
            "{} I/Os failed {what} the throughput region",
            failures.get()
        ));
    }
    let bytes = (count / (SEQ_QUEUE_DEPTH * SEQ_IO_SECTORS))
        * SEQ_QUEUE_DEPTH
        * SEQ_IO_SECTORS
        * SECTOR_SIZE as u64;
    Ok(bytes as f64 / began.elapsed().as_secs_f64() / 1e6)
}

/// 4 KiB reads at random page-aligned offsets for `duration`, 8 in flight. Returns IOPS.
async fn random_reads(
    disk: &Rc<BlockDevice>,
    sectors: u64,
    duration: Duration,
) -> Result<f64, String> {
    const QUEUE_DEPTH: u64 = 8;
    let began = Instant::now();
    let end = began.saturating_add(duration);
    let (reads, failures, done) = (
        Rc::new(Cell::new(0u64)),
        Rc::new(Cell::new(0u32)),
        Rc::new(Cell::new(0u64)),
    );
    for lane in 0..QUEUE_DEPTH {
        let (disk, reads, failures, done) =
            (disk.clone(), reads.clone(), failures.clone(), done.clone());
        let mut state = arch::cpu::rdtsc() | 1 | (lane << 32);
        spawn(async move {
            let mut buf = [0u8; 4096];
            while Instant::now() < end {
                // xorshift64: cheap, good enough to spread offsets over the disk.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let page = state % (sectors / 8);
                if disk.read(page * 8, &mut buf).await.is_err() {
                    failures.set(failures.get() + 1);
                }
                reads.set(reads.get() + 1);
            }
            done.set(done.get() + 1);
        });
    }
    wait_until(|| done.get() == QUEUE_DEPTH).await;
    if failures.get() > 0 {
        return Err(format!("{} random reads failed", failures.get()));
    }
    Ok(reads.get() as f64 / began.elapsed().as_secs_f64())
}

/// Poll `condition` every millisecond until it holds (background tasks run meanwhile).
async fn wait_until(condition: impl Fn() -> bool) {
    while !condition() {
        kernel::executor::after(Duration::from_millis(1)).await;
    }
}

async fn check_read_only(disk: &Rc<BlockDevice>) -> Result<String, String> {
    let mut buf = vec![0u8; 8 * SECTOR_SIZE];
    disk.read(0, &mut buf)
        .await
        .map_err(|e| format!("read on a read-only disk: {e}"))?;
    // Different bytes from those on disk: a write that got through would show outside.
    for byte in &mut buf {
        *byte = !*byte;
    }
    match disk.write(0, &buf).await {
        Err(err) => {
            println!("blkcheck: read-only disk: write refused: {err}");
            Ok(String::from("read-only: reads work, writes are refused"))
        }
        Ok(()) => Err(String::from("a write to a read-only disk succeeded")),
    }
}
