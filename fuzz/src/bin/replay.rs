//! Replay files through a target without AFL: `replay TARGET FILE...`
//! (every crash AFL finds becomes a regression test this way too).
fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_default();
    for f in args {
        let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(
            modelgate_fuzz::run(&target, &data),
            "unknown target {target:?}: use one of {:?}",
            modelgate_fuzz::TARGETS
        );
    }
}
