//! Accepting a batch, whatever carried it (HTTP, [`crate::http`]; MQTT,
//! [`crate::mqtt`]): decompress within the limits, check the batch and each
//! record against the device it came from, store it once, and say why when
//! it is refused, with the HTTP status both transports report.
//!
//! Invariants: every bound of [`Limits`] on decompressed size and record
//! count holds before anything is allocated for the records; a record is
//! accepted only for the authenticated device; the answer is an
//! acknowledgement only when the batch is committed.

use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::{BatchError, Row, Store};
use serde::Deserialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use sluice_protocol::{
    self as protocol, BatchAck, DeviceStatus, ErrorBody, PROTOCOL_VERSION, RecordHeader,
};
use std::io::Read;

/// A batch as it arrived, for a device already authenticated.
#[derive(Debug)]
pub struct Received<'a> {
    /// The device its credentials belong to.
    pub device: &'a str,
    /// The batch key the transport carried beside the body
    /// (`Idempotency-Key`, MQTT correlation data), if any: it must be the
    /// body's.
    pub key: Option<&'a str>,
    /// `zstd` or none (`identity`).
    pub encoding: Option<&'a str>,
    /// The body as received.
    pub body: Vec<u8>,
}

/// Why a batch was refused: the HTTP status (also what an MQTT reply
/// carries) and the body naming the cause (and the record, if one is).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// `400`, `403`, `409`, `413`, `415`, `422` or `500`.
    pub status: u16,
    /// The cause.
    pub body: ErrorBody,
}

impl Refusal {
    /// A refusal of the whole batch.
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            body: ErrorBody::new(message),
        }
    }

    /// A refusal because of record `index`.
    pub fn record(status: u16, index: usize, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            body: ErrorBody::for_record(index as u64, message),
        }
    }

    /// `413` naming the limit and the collector flag that sets it.
    pub fn too_large(what: &str, limit: usize, flag: &str) -> Refusal {
        Refusal::new(
            413,
            format!("{what} exceeds the limit of {limit} (collector flag {flag}); split the batch"),
        )
    }
}

/// The batch's JSON text: the body itself, or the body decompressed within
/// [`Limits::max_decompressed_bytes`].
fn decode(encoding: Option<&str>, body: Vec<u8>, limits: &Limits) -> Result<Vec<u8>, Refusal> {
    let encoding = encoding.unwrap_or("identity");
    let limit = limits.max_decompressed_bytes;
    match encoding {
        protocol::CONTENT_ENCODING => {
            let bad = |e: std::io::Error| {
                Refusal::new(400, format!("the body is not a valid zstd stream: {e}"))
            };
            // A frame that declares its size up front is refused before
            // decompressing anything if that is too much.
            let declared = zstd::zstd_safe::get_frame_content_size(&body)
                .ok()
                .flatten();
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(Refusal::too_large(
                    "the decompressed batch",
                    limit,
                    "--max-decompressed-bytes",
                ));
            }
            let decoder = zstd::Decoder::with_buffer(&body[..]).map_err(bad)?;
            let mut out = Vec::with_capacity(declared.unwrap_or(0) as usize);
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(bad)?;
            if out.len() > limit {
                return Err(Refusal::too_large(
                    "the decompressed batch",
                    limit,
                    "--max-decompressed-bytes",
                ));
            }
            Ok(out)
        }
        "identity" => {
            if body.len() > limit {
                return Err(Refusal::too_large(
                    "the batch",
                    limit,
                    "--max-decompressed-bytes",
                ));
            }
            Ok(body)
        }
        other => Err(Refusal::new(
            415,
            format!("Content-Encoding `{other}` is not supported (zstd or none)"),
        )),
    }
}

/// A batch as read before its records are checked: the records stay one
/// borrowed slice of the text until [`Records`] splits them.
#[derive(Deserialize)]
struct BatchText<'a> {
    #[serde(default = "version_one")]
    protocol: u32,
    device: String,
    key: String,
    #[serde(borrow)]
    records: &'a RawValue,
    /// Kept raw: a status that does not parse is ignored, never a reason
    /// to refuse the records (it is not part of the batch's content).
    #[serde(default, borrow)]
    status: Option<&'a RawValue>,
}

fn version_one() -> u32 {
    1
}

/// The records of a batch as borrowed JSON slices, refusing more than
/// `max` while reading them, so a batch of millions of tiny records is
/// refused before their bookkeeping is allocated.
struct Records<'m> {
    max: usize,
    over: &'m std::cell::Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Records<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Records<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Vec::new();
        while let Some(record) = seq.next_element::<&'de RawValue>()? {
            if records.len() == self.max {
                self.over.set(true);
                return Err(serde::de::Error::custom("too many records"));
            }
            records.push(record);
        }
        Ok(records)
    }
}

/// Check record `index` of `device`'s batch and turn it into a row: `422`
/// naming the record if it is not acceptable.
fn row<'a>(device: &str, index: usize, raw: &'a RawValue) -> Result<Row<'a>, Refusal> {
    let invalid =
        |message: String| Refusal::record(422, index, format!("record {index}: {message}"));
    let header: RecordHeader = serde_json::from_str(raw.get()).map_err(|e| {
        invalid(format!(
            "needs to be an object with string `id`, `device`, `pipeline` and integer `seq`: {e}"
        ))
    })?;
    header
        .check(device)
        .map_err(|e| invalid(format!("{e}; this token is device `{device}`'s")))?;
    protocol::check_name(&header.pipeline)
        .map_err(|e| invalid(format!("pipeline name `{}` {e}", header.pipeline)))?;
    Ok(Row {
        id: header.id,
        pipeline: header.pipeline,
        seq: header.seq,
        body: raw.get(),
    })
}

/// Check `batch` and store it in `store`, counting it in `metrics`: the
/// acknowledgement, or why it was refused.
pub fn store(
    store: &Store,
    metrics: &Metrics,
    limits: &Limits,
    batch: Received<'_>,
) -> Result<BatchAck, Refusal> {
    let result = check_and_store(store, metrics, limits, batch);
    if let Err(refusal) = &result {
        metrics.batch("refused", refusal.status);
    }
    result
}

fn check_and_store(
    store: &Store,
    metrics: &Metrics,
    limits: &Limits,
    received: Received<'_>,
) -> Result<BatchAck, Refusal> {
    let device = received.device;
    let json = decode(received.encoding, received.body, limits)?;
    let batch: BatchText = match serde_json::from_slice(&json) {
        Ok(b) => b,
        Err(e) => {
            return Err(Refusal::new(
                400,
                format!("batch is not valid JSON of the expected shape: {e}"),
            ));
        }
    };
    if batch.protocol > PROTOCOL_VERSION {
        return Err(Refusal::new(
            400,
            format!(
                "batch uses protocol version {}; this collector speaks up to {PROTOCOL_VERSION}",
                batch.protocol
            ),
        ));
    }
    if batch.device != device {
        return Err(Refusal::new(
            403,
            format!(
                "batch claims device `{}`; this token is device `{device}`'s",
                batch.device
            ),
        ));
    }
    if let Some(key) = received.key
        && key != batch.key
    {
        return Err(Refusal::new(
            400,
            format!(
                "{} `{key}` differs from the body's key `{}`",
                protocol::IDEMPOTENCY_KEY,
                batch.key
            ),
        ));
    }
    if batch.key.is_empty() || batch.key.len() > protocol::MAX_KEY_LEN {
        return Err(Refusal::new(
            400,
            format!(
                "batch key has {} bytes; it must have 1 to {}",
                batch.key.len(),
                protocol::MAX_KEY_LEN
            ),
        ));
    }
    let over = std::cell::Cell::new(false);
    let seed = Records {
        max: limits.max_batch_records,
        over: &over,
    };
    let records =
        match seed.deserialize(&mut serde_json::Deserializer::from_str(batch.records.get())) {
            Ok(records) => records,
            Err(_) if over.get() => {
                return Err(Refusal::too_large(
                    "the number of records",
                    limits.max_batch_records,
                    "--max-batch-records",
                ));
            }
            Err(e) => {
                return Err(Refusal::new(
                    400,
                    format!("batch `records` must be an array: {e}"),
                ));
            }
        };
    let rows = records
        .iter()
        .enumerate()
        .map(|(index, raw)| row(device, index, raw))
        .collect::<Result<Vec<_>, _>>()?;
    let status: Option<DeviceStatus> = batch.status.and_then(|raw| {
        serde_json::from_str(raw.get())
            .map_err(|e| tracing::warn!(device, "ignoring the batch's unreadable status: {e}"))
            .ok()
    });
    match store.store_batch_with(device, &batch.key, &rows, status.as_ref()) {
        Ok(ack) => {
            if ack.replayed {
                metrics.batch("replayed", 200);
            } else {
                metrics.batch("stored", 200);
                metrics.records(ack.stored, ack.duplicates);
            }
            Ok(ack)
        }
        Err(e @ BatchError::KeyReused { .. }) => {
            metrics.conflict("key_reused");
            Err(Refusal::new(409, e.to_string()))
        }
        Err(e @ BatchError::IdConflict { index, .. }) => {
            metrics.conflict("id_conflict");
            Err(Refusal::record(409, index, e.to_string()))
        }
        Err(e) => {
            tracing::error!(device, "cannot store batch: {e}");
            Err(Refusal::new(500, format!("cannot store the batch: {e}")))
        }
    }
}
