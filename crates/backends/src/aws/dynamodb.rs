//! Tables on DynamoDB: one DynamoDB table per logical table, string
//! partition key `pk`, on-demand capacity, TTL on `expires_at`. Conditions
//! become ConditionExpressions; an expired item (TTL deletes lazily) counts
//! as absent in every condition and read, as on the embedded backend.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;

use sluice_core::table::{is_expired, AttrValue, Condition, Item, TableError, EXPIRES_AT};
use sluice_core::TableBackend;

use super::{access_problem, describe, wait_until};

/// The partition key attribute of every table.
pub const KEY: &str = "pk";

/// DynamoDB behind the table trait.
#[derive(Clone)]
pub struct AwsTables {
    client: Client,
    wait_active: Duration,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    table: &str,
    err: SdkError<E>,
) -> TableError {
    if let Some(problem) = access_problem(&err) {
        return TableError::AccessDenied(format!("DynamoDB, table {table}: {problem}"));
    }
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            TableError::Unavailable(describe(&err))
        }
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let message = inner.message().unwrap_or("").to_owned();
            match inner.code() {
                Some("ResourceNotFoundException") => TableError::TableNotFound(table.to_owned()),
                Some(
                    "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded",
                ) => TableError::Throttled(message),
                Some("ValidationException") => TableError::InvalidArgument(message),
                code => {
                    let status = service.raw().status().as_u16();
                    if status >= 500 {
                        TableError::Unavailable(format!("HTTP {status} {code:?}: {message}"))
                    } else {
                        TableError::Storage(format!("HTTP {status} {code:?}: {message}"))
                    }
                }
            }
        }
        _ => TableError::Storage(describe(&err)),
    }
}

/// A conditional write's error: a failed condition is typed, the rest classified.
fn conditional<E: ProvideErrorMetadata + std::error::Error + 'static>(
    table: &str,
    err: SdkError<E>,
) -> TableError {
    if err.as_service_error().and_then(|s| s.code()) == Some("ConditionalCheckFailedException") {
        TableError::ConditionFailed
    } else {
        classify(table, err)
    }
}

fn to_dynamo(value: &AttrValue) -> AttributeValue {
    match value {
        AttrValue::S(s) => AttributeValue::S(s.clone()),
        AttrValue::N(n) => AttributeValue::N(n.to_string()),
        AttrValue::B(b) => AttributeValue::Bool(*b),
        AttrValue::L(items) => {
            AttributeValue::L(items.iter().cloned().map(AttributeValue::S).collect())
        }
    }
}

fn from_dynamo(name: &str, value: &AttributeValue) -> Result<AttrValue, TableError> {
    let odd = || TableError::Storage(format!("attribute {name} has a type Sluice does not write"));
    Ok(match value {
        AttributeValue::S(s) => AttrValue::S(s.clone()),
        AttributeValue::N(n) => AttrValue::N(n.parse().map_err(|_| odd())?),
        AttributeValue::Bool(b) => AttrValue::B(*b),
        AttributeValue::L(items) => AttrValue::L(
            items
                .iter()
                .map(|v| v.as_s().cloned().map_err(|_| odd()))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(odd()),
    })
}

fn to_item(attributes: &HashMap<String, AttributeValue>) -> Result<(String, Item), TableError> {
    let key = attributes
        .get(KEY)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .ok_or_else(|| TableError::Storage("an item without its key".into()))?;
    let item = attributes
        .iter()
        .filter(|(name, _)| name.as_str() != KEY)
        .map(|(name, value)| Ok((name.clone(), from_dynamo(name, value)?)))
        .collect::<Result<Item, TableError>>()?;
    Ok((key, item))
}

/// A ConditionExpression with its names and values.
#[derive(Default)]
struct Expression {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expression {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#n{}", self.names.len());
        self.names.insert(placeholder.clone(), attribute.to_owned());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    /// The item exists and has not expired.
    fn live(&mut self, now: i64) -> String {
        let (key, expires, now) = (
            self.name(KEY),
            self.name(EXPIRES_AT),
            self.value(AttributeValue::N(now.to_string())),
        );
        format!(
            "(attribute_exists({key}) AND (attribute_not_exists({expires}) OR {expires} > {now}))"
        )
    }

    /// `None` for a condition that always holds.
    fn condition(&mut self, condition: &Condition, now: i64) -> Option<String> {
        Some(match condition {
            Condition::Always => return None,
            Condition::Absent => {
                let (key, expires, now) = (
                    self.name(KEY),
                    self.name(EXPIRES_AT),
                    self.value(AttributeValue::N(now.to_string())),
                );
                format!("(attribute_not_exists({key}) OR {expires} <= {now})")
            }
            Condition::Present => self.live(now),
            Condition::Equals(attribute, value) => {
                let live = self.live(now);
                let (name, value) = (self.name(attribute), self.value(to_dynamo(value)));
                format!("({live} AND {name} = {value})")
            }
            Condition::Missing(attribute) => {
                let live = self.live(now);
                let name = self.name(attribute);
                format!("({live} AND attribute_not_exists({name}))")
            }
            Condition::All(all) => {
                let parts: Vec<String> =
                    all.iter().filter_map(|c| self.condition(c, now)).collect();
                if parts.is_empty() {
                    return None;
                }
                format!("({})", parts.join(" AND "))
            }
        })
    }
}

impl AwsTables {
    pub fn new(client: Client, wait_active: Duration) -> Self {
        Self {
            client,
            wait_active,
        }
    }

    fn key(key: &str) -> Result<AttributeValue, TableError> {
        if key.is_empty() || key.len() > 2048 {
            return Err(TableError::InvalidArgument(
                "keys are 1 to 2048 bytes".into(),
            ));
        }
        Ok(AttributeValue::S(key.to_owned()))
    }

    /// Conditional puts of distinct keys, side by side; results in order.
    async fn put_wave(
        &self,
        table: &str,
        wave: Vec<(String, Item, Condition)>,
    ) -> Vec<Result<(), TableError>> {
        let calls = wave.into_iter().map(|(key, item, condition)| async move {
            self.put(table, &key, item, condition).await
        });
        futures::future::join_all(calls).await
    }
}

#[async_trait]
impl TableBackend for AwsTables {
    async fn ensure_table(&self, table: &str) -> Result<(), TableError> {
        let exists = match self.client.describe_table().table_name(table).send().await {
            Ok(_) => true,
            Err(e) => match classify(table, e) {
                TableError::TableNotFound(_) => false,
                other => return Err(other),
            },
        };
        if !exists {
            let attribute = AttributeDefinition::builder()
                .attribute_name(KEY)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| TableError::InvalidArgument(e.to_string()))?;
            let key = KeySchemaElement::builder()
                .attribute_name(KEY)
                .key_type(KeyType::Hash)
                .build()
                .map_err(|e| TableError::InvalidArgument(e.to_string()))?;
            let created = self
                .client
                .create_table()
                .table_name(table)
                .attribute_definitions(attribute)
                .key_schema(key)
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            if let Err(e) = created {
                // Created meanwhile by another worker: fine.
                if e.as_service_error()
                    .is_none_or(|s| !s.is_resource_in_use_exception())
                {
                    return Err(classify(table, e));
                }
            }
        }
        let client = self.client.clone();
        wait_until(self.wait_active, &format!("table {table}"), || {
            let client = client.clone();
            async move {
                let out = client
                    .describe_table()
                    .table_name(table)
                    .send()
                    .await
                    .map_err(|e| classify(table, e))?;
                Ok::<_, TableError>(
                    out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active),
                )
            }
        })
        .await
        .map_err(TableError::Unavailable)?;
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .map_err(|e| classify(table, e))?;
        let enabled = ttl
            .time_to_live_description()
            .and_then(|d| d.time_to_live_status())
            .is_some_and(|s| matches!(s, TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling));
        if !enabled {
            let spec = TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(EXPIRES_AT)
                .build()
                .map_err(|e| TableError::InvalidArgument(e.to_string()))?;
            self.client
                .update_time_to_live()
                .table_name(table)
                .time_to_live_specification(spec)
                .send()
                .await
                .map_err(|e| classify(table, e))?;
        }
        Ok(())
    }

    async fn get(&self, table: &str, key: &str) -> Result<Option<Item>, TableError> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .key(KEY, Self::key(key)?)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(table, e))?;
        match out.item() {
            Some(attributes) => {
                let (_, item) = to_item(attributes)?;
                Ok(Some(item).filter(|item| !is_expired(item, now_secs())))
            }
            None => Ok(None),
        }
    }

    async fn put_many(
        &self,
        table: &str,
        puts: Vec<(String, Item, Condition)>,
    ) -> Vec<Result<(), TableError>> {
        // DynamoDB has no conditional batch write (BatchWriteItem takes no
        // conditions, TransactWriteItems fails all for one): concurrent
        // conditional puts, a bounded number at a time, in waves that never
        // hold a key twice, so a put sees every earlier put of its key.
        const IN_FLIGHT: usize = 16;
        let mut out = Vec::with_capacity(puts.len());
        let mut wave: Vec<(String, Item, Condition)> = Vec::new();
        for put in puts {
            if wave.len() == IN_FLIGHT || wave.iter().any(|(key, ..)| *key == put.0) {
                out.extend(self.put_wave(table, std::mem::take(&mut wave)).await);
            }
            wave.push(put);
        }
        out.extend(self.put_wave(table, wave).await);
        out
    }

    async fn put(
        &self,
        table: &str,
        key: &str,
        item: Item,
        condition: Condition,
    ) -> Result<(), TableError> {
        let mut attributes: HashMap<String, AttributeValue> = item
            .iter()
            .map(|(name, value)| (name.clone(), to_dynamo(value)))
            .collect();
        attributes.insert(KEY.to_owned(), Self::key(key)?);
        let mut expression = Expression::default();
        let condition = expression.condition(&condition, now_secs());
        let mut request = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(attributes));
        if let Some(condition) = condition {
            request = request
                .condition_expression(condition)
                .set_expression_attribute_names(Some(expression.names))
                .set_expression_attribute_values(Some(expression.values));
        }
        request
            .send()
            .await
            .map(drop)
            .map_err(|e| conditional(table, e))
    }

    async fn delete(&self, table: &str, key: &str, condition: Condition) -> Result<(), TableError> {
        let mut expression = Expression::default();
        let condition = expression.condition(&condition, now_secs());
        let mut request = self
            .client
            .delete_item()
            .table_name(table)
            .key(KEY, Self::key(key)?);
        if let Some(condition) = condition {
            request = request
                .condition_expression(condition)
                .set_expression_attribute_names(Some(expression.names))
                .set_expression_attribute_values(Some(expression.values));
        }
        request
            .send()
            .await
            .map(drop)
            .map_err(|e| conditional(table, e))
    }

    async fn add(&self, table: &str, key: &str, attr: &str, delta: i64) -> Result<i64, TableError> {
        let out = self
            .client
            .update_item()
            .table_name(table)
            .key(KEY, Self::key(key)?)
            .update_expression("ADD #a :d")
            .expression_attribute_names("#a", attr)
            .expression_attribute_values(":d", AttributeValue::N(delta.to_string()))
            // ALL_NEW: UPDATED_NEW leaves out an attribute that an ADD of 0 did not change.
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| classify(table, e))?;
        out.attributes()
            .and_then(|a| a.get(attr))
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| TableError::Storage(format!("no new value of {attr} in the answer")))
    }

    async fn scan(&self, table: &str) -> Result<Vec<(String, Item)>, TableError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        let now = now_secs();
        loop {
            let out = self
                .client
                .scan()
                .table_name(table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(table, e))?;
            for attributes in out.items() {
                let (key, item) = to_item(attributes)?;
                if !is_expired(&item, now) {
                    items.push((key, item));
                }
            }
            match out.last_evaluated_key() {
                Some(last) if !last.is_empty() => start = Some(last.clone()),
                _ => break,
            }
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(items)
    }
}
