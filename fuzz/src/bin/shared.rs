//! AFL target: see modelgate_fuzz::shared.
fn main() {
    afl::fuzz!(|data: &[u8]| modelgate_fuzz::shared(data));
}
