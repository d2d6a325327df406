//! AFL target: see modelgate_fuzz::der.
fn main() {
    afl::fuzz!(|data: &[u8]| modelgate_fuzz::der(data));
}
