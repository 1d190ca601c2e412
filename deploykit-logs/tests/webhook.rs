//! The webhook forwarder against a real HTTP receiver on loopback: the body is the records'
//! JSON form, and its HMAC-SHA256 signature verifies under the right key only.

mod common;

use deploykit_logs::{
    Forwarder, Level, Record, WEBHOOK_SIGNATURE_HEADER, WebhookForwarder, verify_webhook_signature,
    webhook_signature,
};

const KEY: &[u8] = b"webhook signing key, 32 bytes...";

#[tokio::test]
async fn a_signed_batch_verifies_with_the_key_and_not_without() {
    let (address, receiver) = common::start().await;
    let forwarder = WebhookForwarder::new(&format!("http://{address}/hooks/logs"))
        .unwrap()
        .with_signing_key(KEY)
        .unwrap()
        .with_header("x-tenant", "acme")
        .unwrap();
    let mut batch = common::numbered(0, 3);
    batch[1].level = Some(Level::Error);
    forwarder.send(&batch).await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.request_line, "POST /hooks/logs HTTP/1.1");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-tenant"), Some("acme"));
    let signature = request
        .header(WEBHOOK_SIGNATURE_HEADER)
        .expect("a signature header");
    assert!(signature.starts_with("sha256="), "{signature}");
    assert_eq!(signature.len(), 7 + 64);

    assert!(verify_webhook_signature(KEY, &request.body, signature));
    assert!(!verify_webhook_signature(
        b"another key, also 32 bytes long.",
        &request.body,
        signature
    ));
    let mut tampered = request.body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    assert!(!verify_webhook_signature(KEY, &tampered, signature));
    assert!(!verify_webhook_signature(KEY, &request.body, "sha256=zz"));
    assert_eq!(webhook_signature(KEY, &request.body), signature);

    // The body is the records' own JSON form, in order.
    assert_eq!(common::numbers_in(&requests), [0, 1, 2]);
    let serde_json::Value::Array(items) = request.json() else {
        panic!("a JSON array");
    };
    let mut second = Record::from_json(&items[1].to_string()).unwrap();
    assert_eq!(second.level, Some(Level::Error));
    assert_eq!(second.line, "line 1");
    assert_eq!(second.source.service, "api");
    assert_eq!(second.field("n"), Some(&1.into()));
}

#[tokio::test]
async fn an_unsigned_webhook_has_no_signature_and_errors_name_the_url() {
    let (address, receiver) = common::start().await;
    let url = format!("http://{address}/hook");
    let forwarder = WebhookForwarder::new(&url).unwrap();
    forwarder.send(&common::numbered(0, 1)).await.unwrap();
    assert_eq!(
        receiver.requests()[0].header(WEBHOOK_SIGNATURE_HEADER),
        None
    );

    receiver.script(&[503]);
    let error = forwarder.send(&common::numbered(1, 1)).await.unwrap_err();
    assert!(error.is_retryable());
    assert!(
        error.chain().contains("503") && error.chain().contains(&url),
        "{}",
        error.chain()
    );

    let short = WebhookForwarder::new(&url)
        .unwrap()
        .with_signing_key(&b"short"[..]);
    assert!(short.unwrap_err().to_string().contains("signing_key"));
}
