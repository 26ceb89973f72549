//! The DynamoDB backend: one table shared by every coordinator replica, string keys `pk`/`sk`,
//! and DynamoDB's time to live on `expires_at` (epoch seconds), as the CloudFormation stack in
//! `packaging/cloudformation/autoheal.yaml` creates it. Only `GetItem`, `PutItem`, `UpdateItem`,
//! `DeleteItem` and `Query` are used: what the coordinator's IAM policy grants.
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | leader lease | `LEASE#main` | `LEASE` | `owner`, `endpoint`, `fencing_token` (N), `lease_expires_ms` (N), `last_write_ms` (N) |
//! | journal entry | `JOURNAL` | `<at_ms, 13 digits>#<key>#<phase>` | `data` (JSON entry), `instance_id`, `fencing_token` (N) |
//! | global pause | `PAUSE` | `PAUSE` | `data` (JSON) |
//! | skip | `SKIP` | `<instance>` | `data` (JSON) |
//! | remediation state | `REMEDIATION` | `<instance>` | `data` (JSON), `fencing_token` (N) |
//! | fleet event | `EVENT#<yyyy-mm-dd>` | `<at_ms, 13 digits>#<cursor, 20 digits>` | `data` (JSON), `expires_at` (N, TTL) |
//! | enrollment | `ENROLLMENT` | `<instance>` | `data` (JSON), `version` (N; writes conditional on it) |
//!
//! One partition per kind (and per day for events) so every listing is a `Query`; there is no
//! `Scan` grant. The journal is small (two entries per AWS action) and read mostly whole by a new
//! leader, so one partition holds it; listing one instance filters that partition.
//!
//! The lease item never carries `expires_at`: the table's TTL would delete it, and a deleted
//! lease would restart fencing tokens from 1.
//!
//! # Fencing
//!
//! A `PutItem` can only be conditional on its own item, so a fenced write is two calls: first a
//! conditional `UpdateItem` of the lease item (`SET last_write_ms`, condition `fencing_token =
//! :mine AND lease_expires_ms > :now`), then the write itself. Tokens only grow and the lease
//! item is never deleted, so once another coordinator has claimed the lease (raising the token),
//! or the writer's own lease has expired, the first call fails with
//! `ConditionalCheckFailedException` and the write never happens: [`StoreError::Fenced`]. A
//! leader paused past its lease that wakes up is refused at its next journal intent, which comes
//! before any AWS call, so it does not act. `:now` is the writer's wall clock read at the call,
//! not when the entry was stamped, so time spent stopped counts against it.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use aws_sdk_dynamodb::{
    Client,
    types::{
        AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
        ScalarAttributeType, TimeToLiveSpecification,
    },
};

use crate::adapters::aws::AwsSettings;
use crate::adapters::aws::retry;
use crate::model::enrollment::Enrollment;
use crate::model::events::FleetEvent;
use crate::model::events::PauseState;
use crate::model::journal::Entry;
use crate::ports::aws::AwsError;
use crate::ports::store::Claim;
use crate::ports::store::JournalQuery;
use crate::ports::store::LeaseClaim;
use crate::ports::store::LeaseRecord;
use crate::ports::store::SharedClock;
use crate::ports::store::Skip;
use crate::ports::store::Store;
use crate::ports::store::StoreError;
use crate::ports::store::StoredEvent;
use autoheal_common::clock::from_unix_ms;
use autoheal_common::clock::unix_ms;

const LEASE_PK: &str = "LEASE#main";
const LEASE_SK: &str = "LEASE";
const JOURNAL_PK: &str = "JOURNAL";
const PAUSE_KEY: &str = "PAUSE";
const SKIP_PK: &str = "SKIP";
const REMEDIATION_PK: &str = "REMEDIATION";
const ENROLLMENT_PK: &str = "ENROLLMENT";
/// The TTL attribute the table is created with (CloudFormation `TimeToLiveSpecification`).
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// How many days of event partitions `recent_events` walks back through.
const EVENT_DAYS: u64 = 14;
const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

type Item = HashMap<String, AttributeValue>;

/// The store on one DynamoDB table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// Retries for state and journal calls.
    settings: AwsSettings,
    /// Lease calls are tried once: the lease task is their retry loop, and a failed renew must
    /// step down rather than wait.
    once: AwsSettings,
    clock: SharedClock,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: &str, sk: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn utc_day(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).date().to_string()
}

impl DynamoStore {
    /// `client` is usually `aws::sdk::Clients::dynamodb`; `table` the stack's `<stack>-state`.
    pub fn new(
        client: Client,
        table: impl Into<String>,
        settings: AwsSettings,
        clock: SharedClock,
    ) -> Self {
        let once = AwsSettings {
            max_attempts: 1,
            ..settings.clone()
        };
        Self {
            client,
            table: table.into(),
            settings,
            once,
            clock,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn error(&self, source: AwsError) -> StoreError {
        StoreError::Dynamo {
            table: self.table.clone(),
            source,
        }
    }

    fn malformed(&self, item: &Item, reason: impl Into<String>) -> StoreError {
        let field = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default()
        };
        StoreError::Malformed {
            table: self.table.clone(),
            pk: field("pk"),
            sk: field("sk"),
            reason: reason.into(),
        }
    }

    fn string(&self, item: &Item, name: &str) -> Result<String, StoreError> {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .ok_or_else(|| self.malformed(item, format!("no string {name}")))
    }

    fn number(&self, item: &Item, name: &str) -> Result<u64, StoreError> {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.malformed(item, format!("no number {name}")))
    }

    fn data<T: serde::de::DeserializeOwned>(&self, item: &Item) -> Result<T, StoreError> {
        serde_json::from_str(&self.string(item, "data")?)
            .map_err(|e| self.malformed(item, format!("data does not parse: {e}")))
    }

    fn lease_from(&self, item: &Item) -> Result<LeaseRecord, StoreError> {
        Ok(LeaseRecord {
            owner: self.string(item, "owner")?,
            endpoint: self.string(item, "endpoint")?,
            fencing_token: self.number(item, "fencing_token")?,
            expires_at: from_unix_ms(self.number(item, "lease_expires_ms")?),
        })
    }

    async fn get(
        &self,
        pk: &str,
        sk: &str,
        settings: &AwsSettings,
    ) -> Result<Option<Item>, StoreError> {
        let out = retry(settings, "dynamodb:GetItem", || {
            self.client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key(pk, sk)))
                .consistent_read(true)
                .send()
        })
        .await
        .map_err(|e| self.error(e))?;
        Ok(out.item)
    }

    async fn put(&self, item: Item) -> Result<(), StoreError> {
        retry(&self.settings, "dynamodb:PutItem", || {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .send()
        })
        .await
        .map(|_| ())
        .map_err(|e| self.error(e))
    }

    async fn delete(&self, pk: &str, sk: &str) -> Result<(), StoreError> {
        retry(&self.settings, "dynamodb:DeleteItem", || {
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(pk, sk)))
                .send()
        })
        .await
        .map(|_| ())
        .map_err(|e| self.error(e))
    }

    /// Every item of partition `pk` (optionally filtered on `instance_id`), in key order or
    /// reversed, at most `limit`.
    async fn query(
        &self,
        pk: &str,
        forward: bool,
        instance: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page_limit = limit.map(|l| i32::try_from(l - items.len()).unwrap_or(i32::MAX));
            let out = retry(&self.settings, "dynamodb:Query", || {
                let mut q = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(pk))
                    .consistent_read(true)
                    .scan_index_forward(forward)
                    .set_limit(page_limit)
                    .set_exclusive_start_key(start.clone());
                if let Some(instance) = instance {
                    q = q
                        .filter_expression("instance_id = :instance")
                        .expression_attribute_values(":instance", s(instance));
                }
                q.send()
            })
            .await
            .map_err(|e| self.error(e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() || limit.is_some_and(|l| items.len() >= l) {
                if let Some(l) = limit {
                    items.truncate(l);
                }
                return Ok(items);
            }
        }
    }

    /// The fence: succeeds only while `token` holds an unexpired lease. See the module docs.
    async fn guard(&self, token: u64) -> Result<(), StoreError> {
        let now = unix_ms(self.clock.wall());
        let outcome = retry(&self.settings, "dynamodb:UpdateItem", || {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(LEASE_PK, LEASE_SK)))
                .update_expression("SET last_write_ms = :now")
                .condition_expression("fencing_token = :token AND lease_expires_ms > :now")
                .expression_attribute_values(":token", n(token))
                .expression_attribute_values(":now", n(now))
                .send()
        })
        .await;
        match outcome {
            Ok(_) => Ok(()),
            Err(e) if e.code.as_deref() == Some(CONDITION_FAILED) => Err(self.fenced(token).await),
            Err(e) => Err(self.error(e)),
        }
    }

    /// A `Fenced` error naming the current token when it can be read.
    async fn fenced(&self, token: u64) -> StoreError {
        let current = match self.get(LEASE_PK, LEASE_SK, &self.once).await {
            Ok(Some(item)) => self.number(&item, "fencing_token").ok(),
            _ => None,
        };
        StoreError::Fenced { token, current }
    }
}

#[async_trait::async_trait]
impl Store for DynamoStore {
    async fn append_journal(&self, entry: &Entry) -> Result<(), StoreError> {
        self.guard(entry.fencing_token).await?;
        let data = serde_json::to_string(entry)
            .map_err(|e| self.malformed(&Item::new(), format!("entry does not serialize: {e}")))?;
        let mut item = key(
            JOURNAL_PK,
            &format!("{:013}#{}#{}", entry.at_ms, entry.key, kebab(&entry.phase)),
        );
        item.insert("data".into(), s(data));
        item.insert("instance_id".into(), s(&entry.instance_id));
        item.insert("fencing_token".into(), n(entry.fencing_token));
        // Unconditional: a retry of a write that landed rewrites the same item.
        self.put(item).await
    }

    async fn journal(&self, query: JournalQuery) -> Result<Vec<Entry>, StoreError> {
        let items = match &query {
            JournalQuery::All => self.query(JOURNAL_PK, true, None, None).await?,
            JournalQuery::Instance(id) => self.query(JOURNAL_PK, true, Some(id), None).await?,
            JournalQuery::Recent(0) => Vec::new(),
            JournalQuery::Recent(limit) => {
                self.query(JOURNAL_PK, false, None, Some(*limit)).await?
            }
        };
        items.iter().map(|item| self.data(item)).collect()
    }

    async fn pause(&self) -> Result<PauseState, StoreError> {
        match self.get(PAUSE_KEY, PAUSE_KEY, &self.settings).await? {
            Some(item) => self.data(&item),
            None => Ok(PauseState::default()),
        }
    }

    async fn set_pause(&self, pause: &PauseState) -> Result<(), StoreError> {
        let mut item = key(PAUSE_KEY, PAUSE_KEY);
        item.insert("data".into(), s(json(pause)));
        self.put(item).await
    }

    async fn set_skip(&self, skip: &Skip) -> Result<(), StoreError> {
        let mut item = key(SKIP_PK, &skip.instance_id);
        item.insert("data".into(), s(json(skip)));
        self.put(item).await
    }

    async fn unset_skip(&self, instance_id: &str) -> Result<(), StoreError> {
        self.delete(SKIP_PK, instance_id).await
    }

    async fn skips(&self) -> Result<Vec<Skip>, StoreError> {
        let items = self.query(SKIP_PK, true, None, None).await?;
        items.iter().map(|item| self.data(item)).collect()
    }

    async fn append_event(&self, event: &FleetEvent, ttl: Duration) -> Result<(), StoreError> {
        let stored = StoredEvent::from(event);
        let expires = (self.clock.wall() + ttl)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut item = key(
            &format!("EVENT#{}", utc_day(event.at)),
            &format!("{:013}#{:020}", stored.at_ms, stored.cursor),
        );
        item.insert("data".into(), s(json(&stored)));
        item.insert(TTL_ATTRIBUTE.into(), n(expires));
        self.put(item).await
    }

    async fn recent_events(&self, limit: usize) -> Result<Vec<FleetEvent>, StoreError> {
        let now = self.clock.wall();
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut events = Vec::new();
        for days_back in 0..EVENT_DAYS {
            if events.len() >= limit {
                break;
            }
            let day = utc_day(now - Duration::from_secs(days_back * 86_400));
            let items = self
                .query(&format!("EVENT#{day}"), false, None, None)
                .await?;
            for item in items {
                // DynamoDB deletes expired items lazily (within days), so filter here too.
                if self.number(&item, TTL_ATTRIBUTE)? <= now_secs {
                    continue;
                }
                let stored: StoredEvent = self.data(&item)?;
                events.extend(stored.into_event());
                if events.len() >= limit {
                    break;
                }
            }
        }
        Ok(events)
    }

    async fn set_remediation(
        &self,
        instance_id: &str,
        state: Option<&serde_json::Value>,
        fencing_token: u64,
    ) -> Result<(), StoreError> {
        self.guard(fencing_token).await?;
        match state {
            Some(state) => {
                let mut item = key(REMEDIATION_PK, instance_id);
                item.insert("data".into(), s(state.to_string()));
                item.insert("fencing_token".into(), n(fencing_token));
                self.put(item).await
            }
            None => self.delete(REMEDIATION_PK, instance_id).await,
        }
    }

    async fn remediation(
        &self,
        instance_id: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        match self
            .get(REMEDIATION_PK, instance_id, &self.settings)
            .await?
        {
            Some(item) => self.data(&item).map(Some),
            None => Ok(None),
        }
    }

    async fn remediations(&self) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        let items = self.query(REMEDIATION_PK, true, None, None).await?;
        items
            .iter()
            .map(|item| Ok((self.string(item, "sk")?, self.data(item)?)))
            .collect()
    }

    async fn lease(&self) -> Result<Option<LeaseRecord>, StoreError> {
        match self.get(LEASE_PK, LEASE_SK, &self.once).await? {
            Some(item) => self.lease_from(&item).map(Some),
            None => Ok(None),
        }
    }

    async fn claim_lease(&self, claim: &LeaseClaim, now: SystemTime) -> Result<Claim, StoreError> {
        let now_ms = unix_ms(now);
        let outcome = retry(&self.once, "dynamodb:UpdateItem", || {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(LEASE_PK, LEASE_SK)))
                // The token only ever grows: the item is never deleted.
                .update_expression(
                    "SET #owner = :owner, endpoint = :endpoint, lease_expires_ms = :expires, \
                     acquired_ms = :now, fencing_token = if_not_exists(fencing_token, :zero) + :one",
                )
                .condition_expression(
                    "attribute_not_exists(pk) OR lease_expires_ms < :now OR #owner = :owner",
                )
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":owner", s(&claim.owner))
                .expression_attribute_values(":endpoint", s(&claim.endpoint))
                .expression_attribute_values(":expires", n(unix_ms(now + claim.ttl)))
                .expression_attribute_values(":now", n(now_ms))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":one", n(1))
                .return_values(ReturnValue::AllNew)
                .send()
        })
        .await;
        match outcome {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                Ok(Claim::Won(self.lease_from(&item)?))
            }
            Err(e) if e.code.as_deref() == Some(CONDITION_FAILED) => {
                Ok(Claim::Held(self.lease().await?))
            }
            Err(e) => Err(self.error(e)),
        }
    }

    async fn renew_lease(
        &self,
        held: &LeaseRecord,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<LeaseRecord, StoreError> {
        let outcome = retry(&self.once, "dynamodb:UpdateItem", || {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(LEASE_PK, LEASE_SK)))
                .update_expression("SET lease_expires_ms = :expires, renewed_ms = :now")
                .condition_expression("#owner = :owner AND fencing_token = :token")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":owner", s(&held.owner))
                .expression_attribute_values(":token", n(held.fencing_token))
                .expression_attribute_values(":expires", n(unix_ms(now + ttl)))
                .expression_attribute_values(":now", n(unix_ms(now)))
                .return_values(ReturnValue::AllNew)
                .send()
        })
        .await;
        match outcome {
            Ok(out) => self.lease_from(&out.attributes.unwrap_or_default()),
            Err(e) if e.code.as_deref() == Some(CONDITION_FAILED) => {
                Err(self.fenced(held.fencing_token).await)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    async fn release_lease(&self, held: &LeaseRecord) -> Result<(), StoreError> {
        let outcome = retry(&self.once, "dynamodb:UpdateItem", || {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(LEASE_PK, LEASE_SK)))
                .update_expression("SET lease_expires_ms = :zero")
                .condition_expression("#owner = :owner AND fencing_token = :token")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":owner", s(&held.owner))
                .expression_attribute_values(":token", n(held.fencing_token))
                .expression_attribute_values(":zero", n(0))
                .send()
        })
        .await;
        match outcome {
            Ok(_) => Ok(()),
            // Someone else holds it already: nothing to hand over.
            Err(e) if e.code.as_deref() == Some(CONDITION_FAILED) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn enrollment(&self, instance_id: &str) -> Result<Option<Enrollment>, StoreError> {
        match self.get(ENROLLMENT_PK, instance_id, &self.settings).await? {
            Some(item) => self.data(&item).map(Some),
            None => Ok(None),
        }
    }

    async fn put_enrollment(
        &self,
        record: &Enrollment,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        let mut item = key(ENROLLMENT_PK, &record.instance_id);
        item.insert("data".into(), s(json(record)));
        item.insert("version".into(), n(record.version));
        let outcome = retry(&self.settings, "dynamodb:PutItem", || {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()));
            match expected {
                None => put.condition_expression("attribute_not_exists(pk)"),
                Some(v) => put
                    .condition_expression("version = :expected")
                    .expression_attribute_values(":expected", n(v)),
            }
            .send()
        })
        .await;
        match outcome {
            Ok(_) => Ok(true),
            // A retry of a write that landed also fails the condition: read back to tell.
            Err(e) if e.code.as_deref() == Some(CONDITION_FAILED) => {
                Ok(self.enrollment(&record.instance_id).await?.as_ref() == Some(record))
            }
            Err(e) => Err(self.error(e)),
        }
    }

    async fn enrollments(&self) -> Result<Vec<Enrollment>, StoreError> {
        let items = self.query(ENROLLMENT_PK, true, None, None).await?;
        items.iter().map(|item| self.data(item)).collect()
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    // These types are plain data: serializing them cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// Creates the state table as the CloudFormation stack does (`pk`/`sk` strings, on-demand
/// billing, TTL on `expires_at`), for tests and local development against moto or DynamoDB
/// Local. Production tables come from the stack: the coordinator's IAM policy grants neither
/// `CreateTable` nor `UpdateTimeToLive`.
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let settings = AwsSettings {
        max_attempts: 1,
        ..AwsSettings::default()
    };
    let error = |source| StoreError::Dynamo {
        table: table.to_owned(),
        source,
    };
    let build = |e: aws_sdk_dynamodb::error::BuildError| {
        error(AwsError {
            operation: "dynamodb:CreateTable",
            message: e.to_string(),
            code: None,
            retryable: false,
            attempts: 0,
            fenced: false,
        })
    };
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build)
    };
    let key_element = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(build)
    };
    let attributes = vec![attribute("pk")?, attribute("sk")?];
    let keys = vec![
        key_element("pk", KeyType::Hash)?,
        key_element("sk", KeyType::Range)?,
    ];
    retry(&settings, "dynamodb:CreateTable", || {
        client
            .create_table()
            .table_name(table)
            .set_attribute_definitions(Some(attributes.clone()))
            .set_key_schema(Some(keys.clone()))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
    })
    .await
    .map_err(error)?;
    let ttl = TimeToLiveSpecification::builder()
        .attribute_name(TTL_ATTRIBUTE)
        .enabled(true)
        .build()
        .map_err(|e| {
            error(AwsError {
                operation: "dynamodb:UpdateTimeToLive",
                message: e.to_string(),
                code: None,
                retryable: false,
                attempts: 0,
                fenced: false,
            })
        })?;
    retry(&settings, "dynamodb:UpdateTimeToLive", || {
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(ttl.clone())
            .send()
    })
    .await
    .map_err(error)?;
    Ok(())
}
