//! In-process benchmark: encrypt + decrypt of 1 KiB through the keys plane
//! (policy decision, audit record, AES-256-GCM) against raw AES-256-GCM from
//! the same `aes-gcm` crate in the same run.
//!
//! Single calls each wait for their own durable audit record (shared by
//! group commit between concurrent callers); batch calls decide every item
//! but record one decision per (key, outcome, reason), so they also show
//! what the plane costs beyond AES when the log is not the limit.
//!
//! `cargo run --release --example bench_keys [ops] [concurrency] [batch]`

use std::sync::Arc;
use std::time::Instant;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rampart_audit::{Audit, AuditKeys, AuditOptions};
use rampart_core::SystemClock;
use rampart_crypto::RootKey;
use rampart_keys::ciphertext;
use rampart_keys::policy::{Conditions, Effect, Statement};
use rampart_keys::{
    Auditor, Caller, Context, Envelope, EnvelopeLimits, KeyService, KeySpec, Policies, Principal,
};
use rampart_store::{Keyring, RootKeySource, SqliteStore, Store};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ops: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let conc: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let batch: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
    let plaintext = vec![0x5au8; 1024];
    let aad = b"context";

    // Baseline: raw AES-256-GCM, encrypt then decrypt, fresh random nonce
    // each (from the same pooled source the plane uses), on as many threads
    // as the runtime has workers, so the ratio compares like with like.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = 200_000;
    let raw_pairs = |count: usize| {
        let raw = Aes256Gcm::new(&[7u8; 32].into());
        for _ in 0..count {
            let nonce = rampart_crypto::random_nonce().unwrap();
            let ct = raw
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &plaintext,
                        aad,
                    },
                )
                .unwrap();
            let pt = raw
                .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ct, aad })
                .unwrap();
            std::hint::black_box(pt);
        }
    };
    let t = Instant::now();
    raw_pairs(n);
    let raw_one = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let cpu = cpu_secs();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| raw_pairs(n / threads));
        }
    });
    let raw_rate = (n / threads * threads) as f64 / t.elapsed().as_secs_f64();
    let raw_cpu = cpu_per_pair(cpu, n / threads * threads);
    println!(
        "raw AES-256-GCM encrypt+decrypt 1 KiB: {raw_one:.0} pairs/s on 1 thread, {raw_rate:.0} on {threads} (the ratios below use this one)"
    );

    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let clock = SystemClock::shared();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory(clock.clone()).unwrap());
    let keyring = Arc::new(
        Keyring::initialise(
            store.clone(),
            RootKey::generate().unwrap(),
            RootKeySource::Env,
            None,
            clock.unix_secs(),
        )
        .await
        .unwrap(),
    );
    let (audit, _) = Audit::open(
        AuditOptions::new(dir.path()),
        AuditKeys::generate().unwrap(),
        clock.clone(),
    )
    .unwrap();
    let keys = KeyService::new(
        keyring,
        Policies::new(store.clone(), clock.clone()),
        Auditor::new(Arc::new(audit), "bench"),
        clock,
    );
    keys.policies()
        .set(
            "prod",
            vec![Statement {
                id: "bench".into(),
                effect: Effect::Allow,
                principals: vec!["service:bench".into()],
                actions: vec![
                    "keys:encrypt".into(),
                    "keys:decrypt".into(),
                    "keys:generate-data-key".into(),
                ],
                resources: vec!["key:bench".into()],
                conditions: Conditions::default(),
            }],
        )
        .await
        .unwrap();
    keys.ensure_key("prod", "bench", KeySpec::default())
        .await
        .unwrap();
    let caller = Caller::direct(Principal::service("prod", "bench"));
    let ctx: Context = [("purpose".to_string(), "bench".to_string())].into();

    // Envelope encryption with cached data keys (the in-process path): the
    // plane is asked for a data key once and to unwrap it once; each pair
    // is then local AES-256-GCM with the envelope's header and context as
    // associated data. Same 1 KiB plaintext, output allocated as raw's is,
    // plus zeroizing the plaintext it returns (raw does not).
    let envelope = Arc::new(Envelope::new(
        &keys,
        caller.clone(),
        "bench",
        EnvelopeLimits::default(),
    ));
    let env_pairs = |count: usize| {
        let envelope = envelope.clone();
        let ctx = ctx.clone();
        let plaintext = plaintext.clone();
        async move {
            for _ in 0..count {
                let m = envelope.encrypt(&plaintext, &ctx).await.unwrap();
                std::hint::black_box(envelope.decrypt(&m, &ctx).await.unwrap());
            }
        }
    };
    env_pairs(10).await; // fetch and unwrap the data key first
    let t = Instant::now();
    env_pairs(n).await;
    let env_one = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let cpu = cpu_secs();
    // On as many OS threads as raw used (not runtime tasks, which the
    // scheduler may put on one worker), each driving its own loop.
    let handle = tokio::runtime::Handle::current();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let handle = handle.clone();
            let pairs = env_pairs(n / threads);
            s.spawn(move || handle.block_on(pairs));
        }
    });
    let env_rate = (n / threads * threads) as f64 / t.elapsed().as_secs_f64();
    let env_cpu = cpu_per_pair(cpu, n / threads * threads);
    println!(
        "envelope (cached data key), encrypt+decrypt 1 KiB: {env_one:.0} pairs/s on 1 thread (ratio to raw on 1 thread {:.3}), {env_rate:.0} on {threads} threads (ratio to raw {:.3}){}; data keys generated {}, unwrapped {}",
        env_one / raw_one,
        env_rate / raw_rate,
        match (raw_cpu, env_cpu) {
            (Some(r), Some(e)) => format!(
                "; CPU per pair raw {:.2} us, envelope {:.2} us, CPU ratio {:.3}",
                r * 1e6,
                e * 1e6,
                r / e
            ),
            _ => String::new(),
        },
        envelope.data_keys_generated(),
        envelope.data_keys_unwrapped(),
    );

    // Sequential: every call waits for its own audit record to be fsynced.
    let seq_ops = ops.min(500);
    let t = Instant::now();
    for _ in 0..seq_ops {
        let ct = keys
            .encrypt(&caller, "bench", &plaintext, &ctx)
            .await
            .unwrap();
        std::hint::black_box(keys.decrypt(&caller, &ct, &ctx).await.unwrap());
    }
    let seq_rate = seq_ops as f64 / t.elapsed().as_secs_f64();
    println!(
        "keys plane, 1 caller:  {seq_rate:.0} pairs/s (ratio to raw {:.5})",
        seq_rate / raw_rate
    );

    // Concurrent callers share audit group commits.
    let t = Instant::now();
    let per = ops / conc;
    let mut lat = Vec::with_capacity(ops);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let keys = keys.clone();
        let caller = caller.clone();
        let ctx = ctx.clone();
        let plaintext = plaintext.clone();
        tasks.push(tokio::spawn(async move {
            let mut l = Vec::with_capacity(per);
            for _ in 0..per {
                let s = Instant::now();
                let ct = keys
                    .encrypt(&caller, "bench", &plaintext, &ctx)
                    .await
                    .unwrap();
                std::hint::black_box(keys.decrypt(&caller, &ct, &ctx).await.unwrap());
                l.push(s.elapsed());
            }
            l
        }));
    }
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = t.elapsed().as_secs_f64();
    lat.sort();
    let rate = lat.len() as f64 / elapsed;
    let p = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    };
    println!(
        "keys plane, {conc} callers: {rate:.0} pairs/s ({:.0} ops/s), ratio to raw {:.4}, pair latency p50 {} us p99 {} us",
        rate * 2.0,
        rate / raw_rate,
        p(0.5),
        p(0.99)
    );

    // Batches: each caller encrypts `batch` items in one call, then
    // decrypts them in one call. The callers' inputs are built before the
    // clock starts, and each round moves the new ciphertexts into the
    // decrypt items next to their contexts (built once), so the figure is
    // the plane's and not the harness's copying of contexts.
    let rounds = (ops / (conc * batch)).max(1);
    type Items = Vec<(Vec<u8>, Context)>;
    let inputs: Vec<(Items, Items)> = (0..conc)
        .map(|_| {
            let items: Items = (0..batch)
                .map(|_| (plaintext.clone(), ctx.clone()))
                .collect();
            let cts = items.iter().map(|(_, c)| (Vec::new(), c.clone())).collect();
            (items, cts)
        })
        .collect();
    let t = Instant::now();
    let cpu = cpu_secs();
    let mut tasks = Vec::new();
    for (items, mut cts) in inputs {
        let keys = keys.clone();
        let caller = caller.clone();
        tasks.push(tokio::spawn(async move {
            let mut l = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let s = Instant::now();
                let sealed = keys.encrypt_batch(&caller, "bench", &items).await;
                for ((ct, _), r) in cts.iter_mut().zip(sealed) {
                    *ct = r.unwrap();
                }
                for r in keys.decrypt_batch(&caller, &cts).await {
                    std::hint::black_box(r.unwrap());
                }
                l.push(s.elapsed());
            }
            l
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = t.elapsed().as_secs_f64();
    lat.sort();
    let pairs = (lat.len() * batch) as f64 / elapsed;
    let batch_cpu = cpu_per_pair(cpu, lat.len() * batch);
    let p = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    };
    println!(
        "keys plane, {conc} callers, batches of {batch}: {pairs:.0} pairs/s ({:.0} ops/s), ratio to raw {:.3}, batch round trip p50 {} us p99 {} us",
        pairs * 2.0,
        pairs / raw_rate,
        p(0.5),
        p(0.99)
    );

    // The machine is shared, so wall-clock rates move with other people's
    // load; the process's CPU time (every thread: workers, audit writer and
    // syncer) per pair moves much less, and gives a second ratio.
    if let (Some(r), Some(b)) = (raw_cpu, batch_cpu) {
        println!(
            "CPU time per pair (all threads): raw {:.2} us, batches {:.2} us, CPU ratio {:.3}",
            r * 1e6,
            b * 1e6,
            r / b
        );
    }

    // For reference only (the ratios above use the first raw figure): raw
    // AES-256-GCM over data shaped like the batches, `conc` callers' worth
    // of `batch` distinct 1 KiB items, each with its own AAD as long as the
    // plane's (header and context), taken batch by batch, so the items'
    // memory footprint is on both sides of this ratio.
    let header = ciphertext::header("prod", "bench", 1).unwrap();
    let aad_len = ciphertext::aad(&header, &ctx).len();
    let shaped = |callers: usize| {
        let raw = Aes256Gcm::new(&[7u8; 32].into());
        let sets: Vec<Vec<(Vec<u8>, Vec<u8>)>> = (0..callers)
            .map(|_| {
                (0..batch)
                    .map(|_| (plaintext.clone(), vec![0x41u8; aad_len]))
                    .collect()
            })
            .collect();
        for _ in 0..rounds {
            for set in &sets {
                let cts: Vec<(Vec<u8>, [u8; 12])> = set
                    .iter()
                    .map(|(msg, aad)| {
                        let nonce = rampart_crypto::random_nonce().unwrap();
                        let ct = raw
                            .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
                            .unwrap();
                        (ct, nonce)
                    })
                    .collect();
                for ((ct, nonce), (_, aad)) in cts.iter().zip(set) {
                    std::hint::black_box(
                        raw.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
                            .unwrap(),
                    );
                }
            }
        }
    };
    let per_thread = (conc / threads).max(1);
    let t = Instant::now();
    let cpu = cpu_secs();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| shaped(per_thread));
        }
    });
    let shaped_pairs = threads * per_thread * batch * rounds;
    let shaped_rate = shaped_pairs as f64 / t.elapsed().as_secs_f64();
    let shaped_cpu = cpu_per_pair(cpu, shaped_pairs);
    println!(
        "reference: raw AES-256-GCM over batch-shaped data ({} distinct 1 KiB items, {aad_len}-byte AAD each): {shaped_rate:.0} pairs/s ({:.2} of raw); batches' ratio to it {:.3}{}",
        threads * per_thread * batch,
        shaped_rate / raw_rate,
        pairs / shaped_rate,
        match (shaped_cpu, batch_cpu) {
            (Some(r), Some(b)) => format!(", CPU {:.2} us per pair, batches' CPU ratio to it {:.3}", r * 1e6, r / b),
            _ => String::new(),
        }
    );
}

/// CPU time (user and system, every thread) this process has used, from
/// /proc/self/stat in clock ticks of 1/100 s; `None` where that is missing.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds per pair since `start`.
fn cpu_per_pair(start: Option<f64>, pairs: usize) -> Option<f64> {
    Some((cpu_secs()? - start?) / pairs.max(1) as f64)
}
