//! The EC2 instance identity document: the fields enrollment reads, from the JSON IMDSv2 serves.

use std::time::SystemTime;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub instance_id: String,
    pub account_id: String,
    pub region: String,
    pub availability_zone: String,
    /// Verbatim, as the TOFU key; and parsed, for the age check.
    pub pending_time_text: String,
    pub pending_time: SystemTime,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    instance_id: String,
    account_id: String,
    region: String,
    availability_zone: Option<String>,
    pending_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("not an instance identity document: {0}")]
    Json(String),
    #[error("{field} {value:?} is not valid")]
    Field { field: &'static str, value: String },
}

fn segment_ok(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Document {
    pub fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| DocumentError::Json(e.to_string()))?;
        for (field, value) in [
            ("instanceId", &raw.instance_id),
            ("accountId", &raw.account_id),
            ("region", &raw.region),
        ] {
            if !segment_ok(value) {
                return Err(DocumentError::Field {
                    field,
                    value: autoheal_common::config::prefix(value).to_string(),
                });
            }
        }
        let pending_time = time::OffsetDateTime::parse(
            &raw.pending_time,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| DocumentError::Field {
            field: "pendingTime",
            value: autoheal_common::config::prefix(&raw.pending_time).to_string(),
        })?;
        Ok(Self {
            instance_id: raw.instance_id,
            account_id: raw.account_id,
            region: raw.region,
            availability_zone: raw.availability_zone.unwrap_or_default(),
            pending_time_text: raw.pending_time,
            pending_time: pending_time.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aws_document_parses() {
        let doc = br#"{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "eu-west-1a",
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "i-1234567890abcdef0",
  "instanceType" : "t3.micro",
  "pendingTime" : "2026-12-01T10:00:00Z",
  "privateIp" : "10.0.0.1",
  "region" : "eu-west-1",
  "version" : "2017-09-30"
}"#;
        let d = Document::parse(doc).expect("parses");
        assert_eq!(d.instance_id, "i-1234567890abcdef0");
        assert_eq!(d.region, "eu-west-1");
        assert_eq!(d.pending_time_text, "2026-12-01T10:00:00Z");
    }

    #[test]
    fn junk_ids_and_times_are_refused() {
        assert!(Document::parse(b"{}").is_err());
        let bad = br#"{"accountId":"1","instanceId":"../x","region":"r","pendingTime":"2026-12-01T10:00:00Z"}"#;
        assert!(Document::parse(bad).is_err());
        let bad = br#"{"accountId":"1","instanceId":"i-1","region":"r","pendingTime":"yesterday"}"#;
        assert!(Document::parse(bad).is_err());
    }
}
