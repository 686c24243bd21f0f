//! The agent's cap on malloc arenas, in a test binary of its own: arenas belong to the
//! process, and other tests' threads would make them before the cap.

use std::sync::{Arc, Barrier};

#[test]
fn threads_allocating_at_once_share_the_capped_arenas() {
    assert!(skiff_agent::malloc::limit_arenas(
        skiff_agent::malloc::AGENT_ARENAS
    ));
    // Sixteen threads allocate at the same moment: uncapped, glibc gives each its own
    // arena (up to eight per core).
    let start = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut kept = Vec::new();
                for n in 0..2_000 {
                    kept.push(vec![i as u8; 64 + n % 512]);
                }
                kept.len()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("thread"), 2_000);
    }
    let arenas = skiff_agent::malloc::arenas().expect("malloc_info");
    assert!(
        arenas as i32 <= skiff_agent::malloc::AGENT_ARENAS,
        "{arenas} arenas"
    );
}
