//! AFL target: see modelgate_fuzz::notation.
fn main() {
    afl::fuzz!(|data: &[u8]| modelgate_fuzz::notation(data));
}
