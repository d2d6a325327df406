//! AFL target: see modelgate_fuzz::names.
fn main() {
    afl::fuzz!(|data: &[u8]| modelgate_fuzz::names(data));
}
