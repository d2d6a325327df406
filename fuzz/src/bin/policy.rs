//! AFL target: see modelgate_fuzz::policy.
fn main() {
    afl::fuzz!(|data: &[u8]| modelgate_fuzz::policy(data));
}
