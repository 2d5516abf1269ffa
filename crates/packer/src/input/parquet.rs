//! Streaming Parquet reader for the LLaVA-OneVision-1.5 corpus layout.
//!
//! Columns: `id` (string or integer), `image` (struct `{bytes, path}`, plain binary, or a
//! path string), `images` (list of those), `caption` (string), `conversations` /
//! `messages` (a JSON string or a list of structs), `instruction` / `response` / `system`
//! (strings: the instruction shape). Every other column is passed through
//! into [`Sample::fields`](super::Sample::fields) as JSON, except binary columns, which
//! have no JSON form and are left out. Rows are decoded in record batches of
//! [`BATCH_SIZE`]; each becomes a [`Payload::Sample`] or a [`Payload::Invalid`].

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use serde_json::{Map, Number, Value};

use super::sample::{file_ref, normalise};
use super::{ImageRef, Payload};
use crate::error::{PackError, Result};

/// Rows per decoded record batch.
pub const BATCH_SIZE: usize = 256;

pub(super) struct ParquetReader {
    path: PathBuf,
    file: File,
    meta: ArrowReaderMetadata,
    image_root: PathBuf,
    row_group_rows: Vec<u64>,
    total_rows: u64,
    file_size: u64,
    /// Rows delivered or skipped so far (the next row's number).
    pos: u64,
    reader: Option<ParquetRecordBatchReader>,
    /// The current batch and the index of its next row.
    batch: Option<(RecordBatch, usize)>,
    started: bool,
}

impl ParquetReader {
    pub(super) fn open(path: &Path, image_root: PathBuf) -> Result<Self> {
        let err = |e: &dyn std::fmt::Display| PackError::input(path, e);
        let file = File::open(path).map_err(|e| err(&e))?;
        let file_size = file.metadata().map_err(|e| err(&e))?.len();
        let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
            .map_err(|e| err(&format!("not a readable Parquet file: {e}")))?;
        let schema = meta.schema();
        if !["caption", "conversations", "messages", "instruction"]
            .iter()
            .any(|c| schema.field_with_name(c).is_ok())
        {
            return Err(err(
                &"Parquet file has none of the columns caption, conversations, messages, \
                  instruction",
            ));
        }
        let row_group_rows: Vec<u64> = meta
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as u64)
            .collect();
        let total_rows = row_group_rows.iter().sum();
        Ok(ParquetReader {
            path: path.to_path_buf(),
            file,
            meta,
            image_root,
            row_group_rows,
            total_rows,
            file_size,
            pos: 0,
            reader: None,
            batch: None,
            started: false,
        })
    }

    /// Approximate bytes consumed: the file size scaled by the rows read.
    pub(super) fn consumed(&self) -> u64 {
        if self.total_rows == 0 {
            return if self.started { self.file_size } else { 0 };
        }
        (self.file_size as u128 * self.pos as u128 / self.total_rows as u128) as u64
    }

    /// Rows in the file.
    pub(super) fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// Rows delivered or skipped so far (every row is a record: none is blank).
    pub(super) fn rows_read(&self) -> u64 {
        self.pos
    }

    /// (Re)build the batch reader so that its first row is row `start` of the file,
    /// selecting only the row groups from there on.
    fn seek(&mut self, start: u64) -> Result<()> {
        self.started = true;
        self.batch = None;
        self.reader = None;
        self.pos = start;
        let mut first_row = 0;
        let mut groups = Vec::new();
        let mut offset = 0;
        for (i, &rows) in self.row_group_rows.iter().enumerate() {
            if groups.is_empty() && first_row + rows <= start {
                first_row += rows;
                continue;
            }
            if groups.is_empty() {
                offset = start - first_row;
            }
            groups.push(i);
        }
        if groups.is_empty() {
            return Ok(());
        }
        let file = self
            .file
            .try_clone()
            .map_err(|e| PackError::input(&self.path, e))?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
            .with_batch_size(BATCH_SIZE)
            .with_row_groups(groups)
            .with_offset(offset as usize)
            .build()
            .map_err(|e| PackError::input(&self.path, e))?;
        self.reader = Some(reader);
        Ok(())
    }

    /// Next row as `(0-based row number, payload)`.
    pub(super) fn next_row(&mut self) -> Option<Result<(u64, Payload)>> {
        if !self.started {
            if let Err(e) = self.seek(0) {
                return Some(Err(e));
            }
        }
        loop {
            if let Some((batch, next)) = &mut self.batch {
                if *next < batch.num_rows() {
                    let row = *next;
                    *next += 1;
                    let line = self.pos;
                    self.pos += 1;
                    return Some(Ok((line, row_payload(batch, row, &self.image_root))));
                }
                self.batch = None;
            }
            match self.reader.as_mut()?.next() {
                None => {
                    self.reader = None;
                    return None;
                }
                Some(Err(e)) => {
                    self.reader = None;
                    return Some(Err(PackError::input(&self.path, e)));
                }
                Some(Ok(batch)) => self.batch = Some((batch, 0)),
            }
        }
    }

    /// Skip up to `n` rows using row-group metadata; returns how many were skipped.
    pub(super) fn skip(&mut self, n: u64) -> Result<u64> {
        let k = n.min(self.total_rows - self.pos.min(self.total_rows));
        if k == 0 {
            return Ok(0);
        }
        if let Some((batch, next)) = &mut self.batch {
            let left = (batch.num_rows() - *next) as u64;
            if k <= left {
                *next += k as usize;
                self.pos += k;
                return Ok(k);
            }
        }
        self.seek(self.pos + k)?;
        Ok(k)
    }
}

/// Decode one row into a sample (or an invalid-record reason).
fn row_payload(batch: &RecordBatch, row: usize, image_root: &Path) -> Payload {
    match row_sample(batch, row, image_root) {
        Ok(sample) => Payload::Sample(sample),
        Err(reason) => Payload::Invalid(reason),
    }
}

fn row_sample(
    batch: &RecordBatch,
    row: usize,
    image_root: &Path,
) -> std::result::Result<super::Sample, String> {
    let mut map = Map::new();
    let mut images = Vec::new();
    let mut null_image = false;
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let name = field.name().as_str();
        match name {
            "image" => match image_at(col, row, image_root, "image")? {
                Some(image) => images.push(image),
                None => null_image = true,
            },
            "images" => {
                if col.is_null(row) {
                    continue;
                }
                let list = list_at(col, row).ok_or_else(|| {
                    format!("images column has unsupported type {}", col.data_type())
                })?;
                for i in 0..list.len() {
                    let what = format!("images[{i}]");
                    let image = image_at(&list, i, image_root, &what)?
                        .ok_or_else(|| format!("{what} is null"))?;
                    images.push(image);
                }
            }
            "conversations" | "messages" if string_at(col, row).is_some() => {
                let text = string_at(col, row).unwrap_or_default();
                let value: Value = serde_json::from_str(text)
                    .map_err(|e| format!("{name} is not valid JSON: {e}"))?;
                map.insert(name.to_string(), value);
            }
            _ => {
                if let Some(value) = to_json(col, row) {
                    map.insert(name.to_string(), value);
                }
            }
        }
    }
    normalise(map, image_root, Some(images)).map_err(|e| {
        if null_image && e == "caption sample without image" {
            "image is null".to_string()
        } else {
            e
        }
    })
}

/// The image in `col[row]`; `Ok(None)` when it is null.
fn image_at(
    col: &ArrayRef,
    row: usize,
    root: &Path,
    what: &str,
) -> std::result::Result<Option<ImageRef>, String> {
    if col.is_null(row) {
        return Ok(None);
    }
    if let Some(data) = binary_at(col, row) {
        if data.is_empty() {
            return Err(format!("{what} has empty bytes"));
        }
        return Ok(Some(ImageRef::Bytes {
            data: data.to_vec(),
            given: None,
        }));
    }
    if let Some(path) = string_at(col, row) {
        return file_ref(path.to_string(), root)
            .map(Some)
            .ok_or_else(|| format!("{what} is an empty path"));
    }
    let Some(fields) = col.as_struct_opt() else {
        return Err(format!("{what} has unsupported type {}", col.data_type()));
    };
    let bytes = fields
        .column_by_name("bytes")
        .and_then(|c| binary_at(c, row));
    let path = fields
        .column_by_name("path")
        .and_then(|c| string_at(c, row))
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    match (bytes, path) {
        (Some(data), given) if !data.is_empty() => Ok(Some(ImageRef::Bytes {
            data: data.to_vec(),
            given,
        })),
        // Hugging Face `Image` columns store only a path when the file lives outside.
        (_, Some(path)) => Ok(file_ref(path, root)),
        (Some(_), None) => Err(format!("{what} has empty bytes")),
        (None, None) => Ok(None),
    }
}

fn binary_at(col: &dyn Array, row: usize) -> Option<&[u8]> {
    if col.is_null(row) {
        return None;
    }
    match col.data_type() {
        DataType::Binary => Some(col.as_binary::<i32>().value(row)),
        DataType::LargeBinary => Some(col.as_binary::<i64>().value(row)),
        DataType::BinaryView => Some(col.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => Some(col.as_fixed_size_binary().value(row)),
        _ => None,
    }
}

fn string_at(col: &dyn Array, row: usize) -> Option<&str> {
    if col.is_null(row) {
        return None;
    }
    match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().value(row)),
        DataType::Utf8View => Some(col.as_string_view().value(row)),
        _ => None,
    }
}

/// The list in `col[row]` as an array of its elements.
fn list_at(col: &dyn Array, row: usize) -> Option<ArrayRef> {
    match col.data_type() {
        DataType::List(_) => Some(col.as_list::<i32>().value(row)),
        DataType::LargeList(_) => Some(col.as_list::<i64>().value(row)),
        DataType::FixedSizeList(..) => Some(col.as_fixed_size_list().value(row)),
        _ => None,
    }
}

fn float(v: f64) -> Value {
    Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// `col[row]` as JSON; `None` for types with no JSON form (binary, unsupported).
fn to_json(col: &dyn Array, row: usize) -> Option<Value> {
    macro_rules! prim {
        ($t:ty) => {
            Value::from(col.as_primitive::<$t>().value(row))
        };
    }
    macro_rules! dict {
        ($k:ty) => {{
            let d = col.as_dictionary::<$k>();
            let key = d.keys().value(row);
            return to_json(d.values().as_ref(), key as usize);
        }};
    }
    if col.is_null(row) {
        return Some(Value::Null);
    }
    if let Some(s) = string_at(col, row) {
        return Some(Value::String(s.to_string()));
    }
    let value = match col.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(col.as_boolean().value(row)),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float16 => float(col.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => float(col.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => float(col.as_primitive::<Float64Type>().value(row)),
        DataType::Date32 => Value::String(
            col.as_primitive::<Date32Type>()
                .value_as_date(row)?
                .to_string(),
        ),
        DataType::Date64 => Value::String(
            col.as_primitive::<Date64Type>()
                .value_as_date(row)?
                .to_string(),
        ),
        DataType::Timestamp(unit, _) => {
            use arrow_schema::TimeUnit;
            let t = match unit {
                TimeUnit::Second => col
                    .as_primitive::<TimestampSecondType>()
                    .value_as_datetime(row),
                TimeUnit::Millisecond => col
                    .as_primitive::<TimestampMillisecondType>()
                    .value_as_datetime(row),
                TimeUnit::Microsecond => col
                    .as_primitive::<TimestampMicrosecondType>()
                    .value_as_datetime(row),
                TimeUnit::Nanosecond => col
                    .as_primitive::<TimestampNanosecondType>()
                    .value_as_datetime(row),
            };
            Value::String(t?.to_string())
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
            let list = list_at(col, row)?;
            Value::Array(
                (0..list.len())
                    .map(|i| to_json(&list, i).unwrap_or(Value::Null))
                    .collect(),
            )
        }
        DataType::Struct(_) => {
            let s = col.as_struct();
            let mut map = Map::new();
            for (field, child) in s.fields().iter().zip(s.columns()) {
                if let Some(v) = to_json(child.as_ref(), row) {
                    map.insert(field.name().clone(), v);
                }
            }
            Value::Object(map)
        }
        DataType::Dictionary(key, _) => match key.as_ref() {
            DataType::Int8 => dict!(Int8Type),
            DataType::Int16 => dict!(Int16Type),
            DataType::Int32 => dict!(Int32Type),
            DataType::Int64 => dict!(Int64Type),
            DataType::UInt8 => dict!(UInt8Type),
            DataType::UInt16 => dict!(UInt16Type),
            DataType::UInt32 => dict!(UInt32Type),
            DataType::UInt64 => dict!(UInt64Type),
            _ => return None,
        },
        _ => return None,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{BinaryBuilder, ListBuilder, StringBuilder, StructBuilder};
    use arrow_array::{
        BinaryArray, DictionaryArray, Float64Array, Int64Array, StringArray, StructArray,
    };
    use arrow_schema::{Field, Fields, Schema};
    use std::sync::Arc;

    fn image_struct(
        rows: &[(Option<&[u8]>, Option<&str>)],
        nulls: Option<Vec<bool>>,
    ) -> StructArray {
        let mut b = BinaryBuilder::new();
        let mut p = StringBuilder::new();
        for (bytes, path) in rows {
            b.append_option(*bytes);
            p.append_option(*path);
        }
        let fields = Fields::from(vec![
            Field::new("bytes", DataType::Binary, true),
            Field::new("path", DataType::Utf8, true),
        ]);
        StructArray::new(
            fields,
            vec![Arc::new(b.finish()), Arc::new(p.finish())],
            nulls.map(|n| n.into()),
        )
    }

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = cols
            .iter()
            .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            cols.into_iter().map(|(_, c)| c).collect(),
        )
        .unwrap()
    }

    #[test]
    fn instruction_columns_make_instruction_samples() {
        let img = image_struct(&[(Some(b"JPEG"), Some("a.jpg"))], None);
        let b = batch(vec![
            ("image", Arc::new(img) as ArrayRef),
            ("instruction", Arc::new(StringArray::from(vec!["What?"]))),
            ("response", Arc::new(StringArray::from(vec!["A cat."]))),
            ("system", Arc::new(StringArray::from(vec![None::<&str>]))),
        ]);
        let s = row_sample(&b, 0, Path::new("/root")).unwrap();
        assert_eq!(s.kind, super::super::SampleKind::Instruction);
        assert_eq!(s.fields["response"], "A cat.");
        assert_eq!(s.images.len(), 1);
    }

    #[test]
    fn struct_images_and_passthrough() {
        let img = image_struct(
            &[
                (Some(b"JPEG"), Some("a.jpg")),
                (None, Some("rel/b.jpg")),
                (None, None),
                (Some(b""), None),
            ],
            Some(vec![true, true, false, true]),
        );
        let b = batch(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
            ("image", Arc::new(img)),
            (
                "caption",
                Arc::new(StringArray::from(vec!["c1", "c2", "c3", "c4"])),
            ),
            (
                "score",
                Arc::new(Float64Array::from(vec![0.5, f64::NAN, 1.0, 2.0])),
            ),
            (
                "blob",
                Arc::new(BinaryArray::from_vec(vec![b"x", b"y", b"z", b"w"])),
            ),
            (
                "lang",
                Arc::new(DictionaryArray::<Int32Type>::from_iter([
                    "en", "de", "en", "fr",
                ])),
            ),
        ]);
        let root = Path::new("/root");
        let s = row_sample(&b, 0, root).unwrap();
        assert_eq!(s.id.as_deref(), Some("1"));
        assert_eq!(
            s.images,
            vec![ImageRef::Bytes {
                data: b"JPEG".to_vec(),
                given: Some("a.jpg".into())
            }]
        );
        let keys: Vec<_> = s.fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["caption", "score", "lang"]);
        assert_eq!(s.fields["score"], 0.5);
        assert_eq!(s.fields["lang"], "en");
        let s = row_sample(&b, 1, root).unwrap();
        assert_eq!(s.fields["score"], Value::Null);
        assert_eq!(s.fields["lang"], "de");
        assert_eq!(
            s.images,
            vec![ImageRef::File {
                given: "rel/b.jpg".into(),
                resolved: "/root/rel/b.jpg".into()
            }]
        );
        assert_eq!(row_sample(&b, 2, root).unwrap_err(), "image is null");
        assert_eq!(
            row_sample(&b, 3, root).unwrap_err(),
            "image has empty bytes"
        );
    }

    #[test]
    fn binary_image_and_conversation_forms() {
        // Conversations as a JSON string.
        let b = batch(vec![
            ("id", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
            ("image", Arc::new(BinaryArray::from_vec(vec![b"PNG"]))),
            (
                "conversations",
                Arc::new(StringArray::from(vec![
                    r#"[{"from":"human","value":"<image>hi"},{"from":"gpt","value":"yo"}]"#,
                ])),
            ),
        ]);
        let s = row_sample(&b, 0, Path::new("/r")).unwrap();
        assert_eq!(s.kind, super::super::SampleKind::Conversations);
        assert_eq!(
            s.images,
            vec![ImageRef::Bytes {
                data: b"PNG".to_vec(),
                given: None
            }]
        );
        assert!(s.fields["conversations"].is_array());

        // Conversations as list<struct{from, value}>, images as list<binary>.
        let turn_fields = Fields::from(vec![
            Field::new("from", DataType::Utf8, true),
            Field::new("value", DataType::Utf8, true),
        ]);
        let mut conv = ListBuilder::new(StructBuilder::from_fields(turn_fields, 2));
        for (from, value) in [("human", "<image><image>q"), ("gpt", "a")] {
            let turn = conv.values();
            turn.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(from);
            turn.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value(value);
            turn.append(true);
        }
        conv.append(true);
        let conv = conv.finish();
        let mut imgs = ListBuilder::new(BinaryBuilder::new());
        imgs.values().append_value(b"A");
        imgs.values().append_value(b"B");
        imgs.append(true);
        let imgs = imgs.finish();
        let b = batch(vec![
            ("images", Arc::new(imgs) as ArrayRef),
            ("conversations", Arc::new(conv)),
        ]);
        let s = row_sample(&b, 0, Path::new("/r")).unwrap();
        assert_eq!(s.images.len(), 2);
        assert_eq!(s.fields["conversations"][0]["from"], "human");
        assert_eq!(s.fields["conversations"][1]["value"], "a");
    }

    #[test]
    fn bad_json_string_column() {
        let b = batch(vec![(
            "conversations",
            Arc::new(StringArray::from(vec!["[{"])) as ArrayRef,
        )]);
        let e = row_sample(&b, 0, Path::new("/r")).unwrap_err();
        assert!(e.starts_with("conversations is not valid JSON"), "{e}");
    }
}
