//! Integration tests for `packer::input`: record sources over real temp files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use packer::input::{self, ImageRef, Payload, Record, RecordSource, SampleKind};
use packer::PackError;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// A record reduced to comparable parts: (index, line, file, payload description).
type Row = (u64, u64, usize, String);

fn describe(r: Record) -> Row {
    let payload = match r.payload {
        Payload::Json(bytes) => format!("json:{}", String::from_utf8_lossy(&bytes)),
        Payload::Invalid(reason) => format!("invalid:{reason}"),
        Payload::Sample(s) => format!("sample:{:?}:{:?}:{:?}", s.id, s.kind, s.fields),
    };
    (r.index, r.line, r.file, payload)
}

fn read_all(src: &mut dyn RecordSource) -> Vec<Row> {
    let mut out = Vec::new();
    while let Some(rec) = src.next_record() {
        out.push(describe(rec.expect("record")));
    }
    out
}

fn open(input: &Path) -> Box<dyn RecordSource> {
    input::open(input.to_str().unwrap(), None).expect("open")
}

const JSONL: &[u8] = b"{\"id\":\"a\",\"image\":\"a.jpg\",\"caption\":\"one\"}\r\n\
\n\
{\"id\":\"b\",\"image\":\"b.jpg\",\"caption\":\"two\"}\n\
   \r\n\
\r\n\
{\"id\":\"c\",\"image\":\"c.jpg\",\"caption\":\"three\"}\r\n\
{\"id\":\"d\",\"image\":\"d.jpg\",\"caption\":\"four\"}";

fn expected_jsonl(file: usize, first_index: u64) -> Vec<Row> {
    let lines = [
        (1, "a", "one"),
        (3, "b", "two"),
        (6, "c", "three"),
        (7, "d", "four"),
    ];
    lines
        .iter()
        .enumerate()
        .map(|(i, (line, id, cap))| {
            (
                first_index + i as u64,
                *line,
                file,
                format!("json:{{\"id\":\"{id}\",\"image\":\"{id}.jpg\",\"caption\":\"{cap}\"}}"),
            )
        })
        .collect()
}

fn write_zst(path: &Path, data: &[u8]) {
    fs::write(path, zstd::encode_all(data, 3).unwrap()).unwrap();
}

#[test]
fn plain_jsonl_blank_lines_crlf_and_no_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    fs::write(&path, JSONL).unwrap();
    let mut src = open(&path);
    assert_eq!(src.files(), std::slice::from_ref(&path));
    assert_eq!(src.progress(), (0, Some(JSONL.len() as u64)));
    assert_eq!(read_all(&mut *src), expected_jsonl(0, 0));
    assert_eq!(
        src.progress(),
        (JSONL.len() as u64, Some(JSONL.len() as u64))
    );
    // Lines parse with the file's folder as the image root.
    let root = input::image_root_for(&path, None);
    assert_eq!(root, dir.path());
    let mut src = open(&path);
    let Payload::Json(bytes) = src.next_record().unwrap().unwrap().payload else {
        panic!()
    };
    let sample = input::parse(&bytes, &root).unwrap();
    assert_eq!(sample.kind, SampleKind::Caption);
    assert_eq!(
        sample.images,
        [ImageRef::File {
            given: "a.jpg".into(),
            resolved: dir.path().join("a.jpg")
        }]
    );
}

#[test]
fn zstd_jsonl_matches_plain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl.zst");
    write_zst(&path, JSONL);
    let size = fs::metadata(&path).unwrap().len();
    let mut src = open(&path);
    assert_eq!(read_all(&mut *src), expected_jsonl(0, 0));
    assert_eq!(src.progress(), (size, Some(size)));
}

#[test]
fn glob_reads_files_in_sorted_order_with_global_indices() {
    let dir = tempfile::tempdir().unwrap();
    let parts = dir.path().join("parts");
    fs::create_dir(&parts).unwrap();
    fs::write(parts.join("b.jsonl"), JSONL).unwrap();
    write_zst(&parts.join("a.jsonl.zst"), JSONL);
    fs::write(parts.join("c.jsonl"), b"{\"x\":1}\n").unwrap();
    fs::write(parts.join("notes.txt"), b"ignored").unwrap();
    let pattern = format!("{}/*.jsonl*", parts.display());
    let mut src = input::open(&pattern, None).unwrap();
    let names: Vec<_> = src
        .files()
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["a.jsonl.zst", "b.jsonl", "c.jsonl"]);
    let mut expected = expected_jsonl(0, 0);
    expected.extend(expected_jsonl(1, 4));
    expected.push((8, 1, 2, "json:{\"x\":1}".into()));
    assert_eq!(read_all(&mut *src), expected);
    let total: u64 = src
        .files()
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(src.progress(), (total, Some(total)));

    // skip across file boundaries.
    for n in 0..=9 {
        let mut src = input::open(&pattern, None).unwrap();
        src.skip(n).unwrap();
        assert_eq!(read_all(&mut *src), expected[n as usize..], "skip {n}");
    }
    let mut src = input::open(&pattern, None).unwrap();
    assert!(matches!(src.skip(10), Err(PackError::Input { .. })));
}

fn image_column(rows: usize) -> StructArray {
    let mut bytes = BinaryBuilder::new();
    let mut paths = StringBuilder::new();
    for i in 0..rows {
        if i % 5 == 4 {
            bytes.append_null();
            paths.append_null();
        } else {
            bytes.append_value(format!("IMG{i}").as_bytes());
            paths.append_value(format!("img/{i}.jpg"));
        }
    }
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let nulls: Vec<bool> = (0..rows).map(|i| i % 5 != 4).collect();
    StructArray::new(
        fields,
        vec![Arc::new(bytes.finish()), Arc::new(paths.finish())],
        Some(nulls.into()),
    )
}

/// Writes `rows` rows in batches of 7 with row groups of at most `group` rows.
fn write_parquet(path: &Path, rows: usize, group: usize) {
    let image = image_column(rows);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("image", image.data_type().clone(), true),
        Field::new("caption", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, true),
    ]));
    let ids = Int64Array::from_iter_values(0..rows as i64);
    let captions = StringArray::from_iter_values((0..rows).map(|i| format!("caption {i}")));
    let sources = StringArray::from_iter_values((0..rows).map(|i| format!("shard-{}", i / 10)));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(image),
        Arc::new(captions),
        Arc::new(sources),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_size(group)
        .build();
    let mut w = ArrowWriter::try_new(fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    let mut start = 0;
    while start < rows {
        let len = 7.min(rows - start);
        w.write(&batch.slice(start, len)).unwrap();
        start += len;
    }
    w.close().unwrap();
}

#[test]
fn parquet_rows_become_samples() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mid.parquet");
    write_parquet(&path, 600, 128);
    let mut src = open(&path);
    let mut n = 0u64;
    while let Some(rec) = src.next_record() {
        let rec = rec.unwrap();
        assert_eq!((rec.index, rec.line, rec.file), (n, n, 0));
        match rec.payload {
            Payload::Sample(s) => {
                assert_eq!(s.id, Some(n.to_string()));
                assert_eq!(s.kind, SampleKind::Caption);
                assert_eq!(
                    s.images,
                    [ImageRef::Bytes {
                        data: format!("IMG{n}").into_bytes(),
                        given: Some(format!("img/{n}.jpg")),
                    }]
                );
                let keys: Vec<_> = s.fields.keys().map(String::as_str).collect();
                assert_eq!(keys, ["caption", "source"]);
                assert_eq!(s.fields["caption"], format!("caption {n}"));
                assert_eq!(s.fields["source"], format!("shard-{}", n / 10));
            }
            Payload::Invalid(reason) => {
                assert_eq!(n % 5, 4, "row {n}: {reason}");
                assert_eq!(reason, "image is null");
            }
            Payload::Json(_) => panic!("parquet gave raw JSON"),
        }
        n += 1;
    }
    assert_eq!(n, 600);
    let size = fs::metadata(&path).unwrap().len();
    assert_eq!(src.progress(), (size, Some(size)));
}

#[test]
fn skip_equals_reading_and_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("d.jsonl");
    let zst = dir.path().join("d.jsonl.zst");
    let pq = dir.path().join("d.parquet");
    let mut data = Vec::new();
    for i in 0..50 {
        data.extend_from_slice(format!("{{\"id\":{i},\"caption\":\"c\"}}\n").as_bytes());
        if i % 7 == 0 {
            data.extend_from_slice(b"\r\n");
        }
    }
    fs::write(&plain, &data).unwrap();
    write_zst(&zst, &data);
    write_parquet(&pq, 50, 8);
    for path in [&plain, &zst, &pq] {
        let all = read_all(&mut *open(path));
        assert_eq!(all.len(), 50);
        for n in [0u64, 1, 7, 8, 9, 16, 31, 49, 50] {
            let mut src = open(path);
            src.skip(n).unwrap();
            assert_eq!(
                read_all(&mut *src),
                all[n as usize..],
                "{} skip {n}",
                path.display()
            );
        }
        // Skipping in the middle of reading.
        let mut src = open(path);
        for _ in 0..3 {
            src.next_record().unwrap().unwrap();
        }
        src.skip(10).unwrap();
        assert_eq!(
            read_all(&mut *src),
            all[13..],
            "{} read 3, skip 10",
            path.display()
        );
        let mut src = open(path);
        assert!(matches!(src.skip(51), Err(PackError::Input { .. })));
    }
}

#[test]
fn missing_inputs_are_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    match input::open(missing.to_str().unwrap(), None) {
        Err(PackError::Input { path, message }) => {
            assert_eq!(path, missing);
            assert!(message.contains("no such file"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let pattern = format!("{}/*.parquet", dir.path().display());
    match input::open(&pattern, None) {
        Err(PackError::Input { path, message }) => {
            assert_eq!(path, PathBuf::from(&pattern));
            assert!(message.contains("matched no files"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    match input::open(dir.path().to_str().unwrap(), None) {
        Err(PackError::Input { message, .. }) => {
            assert!(message.contains("directory"), "{message}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn huge_line_is_invalid_and_reading_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut data = Vec::with_capacity(input::MAX_LINE + 200);
    data.extend_from_slice(b"{\"caption\":\"");
    data.resize(input::MAX_LINE + 10, b'x');
    data.extend_from_slice(b"\"}\n{\"id\":\"next\",\"image\":\"n.jpg\",\"caption\":\"ok\"}\n");
    fs::write(&path, &data).unwrap();
    drop(data);
    let mut src = open(&path);
    let rows = read_all(&mut *src);
    assert_eq!(
        rows,
        [
            (0, 1, 0, format!("invalid:{}", input::TOO_LONG)),
            (
                1,
                2,
                0,
                "json:{\"id\":\"next\",\"image\":\"n.jpg\",\"caption\":\"ok\"}".into()
            ),
        ]
    );
    let mut src = open(&path);
    src.skip(1).unwrap();
    assert_eq!(read_all(&mut *src)[0].3, rows[1].3);
}

#[test]
fn invalid_utf8_reaches_parse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    fs::write(
        &path,
        b"{\"id\":\"\xc3\x28\",\"image\":\"a.jpg\",\"caption\":\"c\"}\n",
    )
    .unwrap();
    let mut src = open(&path);
    let rec = src.next_record().unwrap().unwrap();
    let Payload::Json(bytes) = rec.payload else {
        panic!("expected raw bytes")
    };
    assert_eq!(
        input::parse(&bytes, dir.path()).unwrap_err(),
        "invalid UTF-8 at byte 7"
    );
    assert!(src.next_record().is_none());
}

#[test]
fn mixed_kinds_in_one_glob() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("a.parquet"), 5, 2);
    fs::write(dir.path().join("b.jsonl"), JSONL).unwrap();
    let pattern = format!("{}/*", dir.path().display());
    let rows = read_all(&mut *input::open(&pattern, None).unwrap());
    assert_eq!(rows.len(), 9);
    assert_eq!((rows[4].0, rows[4].1, rows[4].2), (4, 4, 0));
    assert!(rows[4].3.starts_with("invalid:"));
    assert_eq!(rows[5..], expected_jsonl(1, 5));
}

#[test]
fn corrupt_parquet_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.parquet");
    fs::write(&path, b"not parquet at all").unwrap();
    let mut src = open(&path);
    assert!(matches!(
        src.next_record(),
        Some(Err(PackError::Input { .. }))
    ));
    assert!(src.next_record().is_none());
}

#[test]
fn zstd_multi_frame_and_truncated() {
    let dir = tempfile::tempdir().unwrap();
    // Concatenated frames (e.g. `cat a.zst b.zst`) read as one stream.
    let path = dir.path().join("multi.jsonl.zst");
    let mut data = zstd::encode_all(&JSONL[..60], 3).unwrap();
    data.extend(zstd::encode_all(&JSONL[60..], 3).unwrap());
    fs::write(&path, &data).unwrap();
    assert_eq!(read_all(&mut *open(&path)), expected_jsonl(0, 0));
    // A truncated file is a job-level input error, not a silent end.
    let path = dir.path().join("cut.jsonl.zst");
    fs::write(&path, &data[..data.len() - 5]).unwrap();
    let mut src = open(&path);
    let mut saw_error = false;
    while let Some(rec) = src.next_record() {
        if let Err(e) = rec {
            assert!(matches!(e, PackError::Input { .. }));
            saw_error = true;
        }
    }
    assert!(saw_error);
}

#[test]
fn literal_path_with_glob_characters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part[1].jsonl");
    fs::write(&path, JSONL).unwrap();
    let mut src = open(&path);
    assert_eq!(src.files(), std::slice::from_ref(&path));
    assert_eq!(read_all(&mut *src).len(), 4);
}

#[test]
fn json_array_elements_are_records_with_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let array = b"\xef\xbb\xbf \n [\n  {\"id\": \"a\", \"image\": \"a.jpg\", \"caption\": \"one\"},\n  {\"id\": \"b\"}\n]\n";
    let plain = dir.path().join("corpus.json");
    fs::write(&plain, array).unwrap();
    let zst = dir.path().join("corpus.json.zst");
    write_zst(&zst, array);
    let sniffed = dir.path().join("corpus.data");
    fs::write(&sniffed, array).unwrap();
    let first = r#"{"id": "a", "image": "a.jpg", "caption": "one"}"#;
    let expected = vec![
        (0, 0, 0, format!("json:{first}")),
        (1, 1, 0, r#"json:{"id": "b"}"#.to_string()),
    ];
    for path in [&plain, &zst, &sniffed] {
        let mut src = open(path);
        let mut offsets = Vec::new();
        let mut rows = Vec::new();
        while let Some(rec) = src.next_record() {
            let rec = rec.unwrap();
            offsets.push(rec.offset.expect("array elements carry their offset"));
            rows.push(describe(rec));
        }
        assert_eq!(rows, expected, "{}", path.display());
        // Offsets are in the decompressed file: where each element's text starts.
        assert_eq!(offsets, [10, 61], "{}", path.display());
        assert_eq!(&array[10..10 + first.len()], first.as_bytes());
        // An array has no blank lines: lines() counts its elements.
        assert_eq!(src.lines(), 2);
        assert_eq!(src.progress().0, fs::metadata(path).unwrap().len());
        // Resume skips elements exactly as reading them does.
        let mut src = open(path);
        src.skip(1).unwrap();
        assert_eq!(read_all(&mut *src), expected[1..]);
        assert!(matches!(open(path).skip(3), Err(PackError::Input { .. })));
    }
    // One object per line is JSON Lines, whatever the extension; its records have no offset.
    let lines = dir.path().join("lines.json");
    fs::write(&lines, JSONL).unwrap();
    let mut src = open(&lines);
    let rec = src.next_record().unwrap().unwrap();
    assert_eq!(rec.offset, None);
    assert_eq!(read_all(&mut *src).len(), 3);
}

#[test]
fn a_pretty_printed_top_level_object_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let doc = b"{\n  \"data\": [\n    {\"id\": \"a\", \"caption\": \"x\"}\n  ]\n}\n";
    for name in ["doc.json", "doc.json.zst"] {
        let path = dir.path().join(name);
        if name.ends_with(".zst") {
            write_zst(&path, doc);
        } else {
            fs::write(&path, doc).unwrap();
        }
        match input::open(path.to_str().unwrap(), None) {
            Err(PackError::Input { message, .. }) => {
                assert!(message.contains("one JSON object"), "{message}");
                assert!(message.contains("jq -c '.KEY[]'"), "{message}");
            }
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn several_inputs_are_read_in_the_order_given() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.jsonl");
    let a = dir.path().join("a.jsonl.zst");
    fs::write(&b, JSONL).unwrap();
    write_zst(&a, JSONL);
    fs::create_dir(dir.path().join("more")).unwrap();
    fs::write(dir.path().join("more/x.jsonl"), b"{\"x\":1}\n").unwrap();
    let inputs = [
        b.display().to_string(),
        a.display().to_string(),
        format!("{}/more/*.jsonl", dir.path().display()),
    ];
    let mut src = input::open_all(&inputs, None).unwrap();
    let names: Vec<_> = src
        .files()
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["b.jsonl", "a.jsonl.zst", "x.jsonl"]);
    let mut expected = expected_jsonl(0, 0);
    expected.extend(expected_jsonl(1, 4));
    expected.push((8, 1, 2, "json:{\"x\":1}".into()));
    assert_eq!(read_all(&mut *src), expected);
    // Resume skips across the inputs exactly as across a glob's files.
    for n in [0u64, 3, 4, 8, 9] {
        let mut src = input::open_all(&inputs, None).unwrap();
        src.skip(n).unwrap();
        assert_eq!(read_all(&mut *src), expected[n as usize..], "skip {n}");
    }
}

#[test]
fn an_input_file_named_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    fs::write(&a, JSONL).unwrap();
    let twice = [
        a.display().to_string(),
        format!("{}/*.jsonl", dir.path().display()),
    ];
    match input::open_all(&twice, None) {
        Err(PackError::Input { path, message }) => {
            assert_eq!(path, a);
            assert!(message.contains("named twice"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn lines_count_every_line_so_blank_ones_are_lines_minus_records() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("a.jsonl");
    fs::write(&plain, JSONL).unwrap(); // 7 lines, 4 records
    let zst = dir.path().join("b.jsonl.zst");
    write_zst(&zst, b"\n\n{\"x\":1}\n\n");
    let inputs = [plain.display().to_string(), zst.display().to_string()];
    let mut src = input::open_all(&inputs, None).unwrap();
    assert_eq!(read_all(&mut *src).len(), 5);
    assert_eq!(src.lines(), 7 + 4);
    for n in 0..=5 {
        let mut src = input::open_all(&inputs, None).unwrap();
        src.skip(n).unwrap();
        read_all(&mut *src);
        assert_eq!(src.lines(), 11, "skip {n}");
    }
    let pq = dir.path().join("c.parquet");
    write_parquet(&pq, 20, 8);
    let mut src = open(&pq);
    assert_eq!(read_all(&mut *src).len(), 20);
    assert_eq!(src.lines(), 20);
}

#[test]
fn zstd_progress_follows_the_records_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl.zst");
    let mut data = Vec::new();
    for i in 0..3000 {
        data.extend_from_slice(
            format!(
                "{{\"id\":{i},\"caption\":\"caption {}\"}}\n",
                i * 7919 % 104729
            )
            .as_bytes(),
        );
    }
    write_zst(&path, &data);
    let size = fs::metadata(&path).unwrap().len();
    let mut src = open(&path);
    for _ in 0..510 {
        src.next_record().unwrap().unwrap();
    }
    let (done, total) = src.progress();
    assert_eq!(total, Some(size));
    // About 17 % (the whole file is decompressed into the buffer at once).
    let share = done as f64 / size as f64;
    assert!((0.15..0.19).contains(&share), "{share}");
    read_all(&mut *src);
    assert_eq!(src.progress(), (size, Some(size)));
}
