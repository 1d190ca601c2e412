//! S3 settings the AWS SDK does not read itself.

/// Whether S3 is addressed path-style: for an S3-compatible store's endpoint
/// (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`), or when `DEPLOYKIT_S3_PATH_STYLE` is 1 or true.
pub(crate) fn path_style() -> bool {
    let custom_endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|u| !u.is_empty()));
    custom_endpoint
        || std::env::var("DEPLOYKIT_S3_PATH_STYLE").is_ok_and(|v| v == "1" || v == "true")
}
