//! AFL target: see modelgate_fuzz::sigstore.
fn main() {
    afl::fuzz!(|data: &[u8]| modelgate_fuzz::sigstore(data));
}
