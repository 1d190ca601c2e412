//! stub
#[test]
fn stub() { let _ = cel::Program::compile("1 + 1").unwrap(); }
