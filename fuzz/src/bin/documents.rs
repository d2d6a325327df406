//! AFL target: see modelgate_fuzz::documents.
fn main() {
    afl::fuzz!(|data: &[u8]| modelgate_fuzz::documents(data));
}
