//! Parquet files as the Hugging Face hub stores image data sets: an image column holding
//! `{bytes, path}` structs (PNG/JPEG bytes; a plain binary column works too) and an integer
//! label column. Class names come from the `huggingface` key of the file metadata (the
//! `ClassLabel` feature's `names`) when the file has it.
//!
//! Rows are read one row group at a time and decoded in parallel, so the encoded images
//! never sit in memory all at once.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use rayon::prelude::*;

use super::Item;
use crate::error::{Error, Result};
use crate::tokenizer::RgbImage;

/// Which columns hold the images and the labels (`None`: the first of the usual names).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Columns {
    pub image: Option<String>,
    pub label: Option<String>,
}

const IMAGE_NAMES: [&str; 3] = ["image", "img", "pixel_values"];
const LABEL_NAMES: [&str; 5] = ["label", "labels", "fine_label", "coarse_label", "class"];

/// A parquet file as read: its images (with labels when the file has a label column) and
/// the class names recorded in its metadata.
pub struct ParquetImages {
    pub items: Vec<Item>,
    pub class_names: Option<Vec<String>>,
}

fn pick(
    fields: &[Arc<Type>],
    wanted: &Option<String>,
    defaults: &[&str],
    what: &str,
    path: &Path,
) -> Result<Option<usize>> {
    let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    match wanted {
        Some(w) => names.iter().position(|n| n == w).map(Some).ok_or_else(|| {
            Error::format(path, format!("no {what} column `{w}`; the file's columns are: {}", names.join(", ")))
        }),
        None => Ok(defaults.iter().find_map(|d| names.iter().position(|n| n == d))),
    }
}

/// The image bytes of one cell: a `{bytes, path}` struct or a plain binary value.
fn image_bytes(field: &Field) -> Option<&[u8]> {
    match field {
        Field::Bytes(b) => Some(b.data()),
        Field::Group(row) => row.get_column_iter().find_map(|(name, f)| match (name.as_str(), f) {
            ("bytes", Field::Bytes(b)) => Some(b.data()),
            _ => None,
        }),
        _ => None,
    }
}

fn label_value(field: &Field) -> Option<i64> {
    Some(match *field {
        Field::Byte(v) => v as i64,
        Field::Short(v) => v as i64,
        Field::Int(v) => v as i64,
        Field::Long(v) => v,
        Field::UByte(v) => v as i64,
        Field::UShort(v) => v as i64,
        Field::UInt(v) => v as i64,
        Field::ULong(v) => v as i64,
        _ => return None,
    })
}

/// Class names of the label column from the `huggingface` metadata (datasets' ClassLabel).
fn class_names(reader: &SerializedFileReader<File>, label: &str) -> Option<Vec<String>> {
    let kv = reader.metadata().file_metadata().key_value_metadata()?;
    let json = kv.iter().find(|k| k.key == "huggingface")?.value.as_ref()?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let names = v.get("info")?.get("features")?.get(label)?.get("names")?.as_array()?;
    names.iter().map(|n| n.as_str().map(str::to_string)).collect()
}

/// Reads one parquet file. `progress` is called once per decoded image.
/// With `fit`, each image is resized to fit x fit as soon as it is decoded.
/// The parquet crate panics on some corrupt files: those panics become errors naming the file.
pub fn read(path: &Path, cols: &Columns, fit: Option<usize>, progress: &(dyn Fn() + Sync)) -> Result<ParquetImages> {
    crate::error::contain_panics(path, || read_file(path, cols, fit, progress))
}

fn read_file(path: &Path, cols: &Columns, fit: Option<usize>, progress: &(dyn Fn() + Sync)) -> Result<ParquetImages> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::format(path, format!("not a readable parquet file ({e})")))?;
    let schema = reader.metadata().file_metadata().schema_descr().root_schema().clone();
    let fields = schema.get_fields();
    let Some(ii) = pick(fields, &cols.image, &IMAGE_NAMES, "image", path)? else {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        return Err(Error::format(
            path,
            format!(
                "no image column (looked for {}); name it with --image-column (columns: {})",
                IMAGE_NAMES.join(", "),
                names.join(", ")
            ),
        ));
    };
    let li = pick(fields, &cols.label, &LABEL_NAMES, "label", path)?;
    // Read only the two columns.
    let mut projected = vec![fields[ii].clone()];
    projected.extend(li.map(|l| fields[l].clone()));
    let projection = Type::group_type_builder(schema.name())
        .with_fields(projected)
        .build()
        .map_err(|e| Error::format(path, format!("parquet schema: {e}")))?;
    let names = li.and_then(|l| class_names(&reader, fields[l].name()));

    let mut items = Vec::new();
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| Error::format(path, format!("row group {g}: {e}")))?;
        let rows: Vec<Row> = group
            .get_row_iter(Some(projection.clone()))
            .map_err(|e| Error::format(path, format!("row group {g}: {e}")))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::format(path, format!("row group {g}: {e}")))?;
        let decoded: Result<Vec<Item>> = rows
            .par_iter()
            .enumerate()
            .map(|(r, row)| {
                let cells: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
                let at = format!("{}: row group {g}, row {r}", path.display());
                let bytes = image_bytes(cells[0])
                    .ok_or_else(|| Error::Invalid(format!("{at}: the image cell holds no bytes")))?;
                let image = RgbImage::decode(bytes, Path::new(&at))?.fit(fit);
                let label = match cells.get(1) {
                    None => None,
                    Some(f) => match label_value(f) {
                        Some(v) if (0..=u16::MAX as i64).contains(&v) => Some(v as u16),
                        Some(v) if v < 0 => None, // datasets writes -1 for "no label" (test splits)
                        Some(v) => return Err(Error::Invalid(format!("{at}: label {v} does not fit 0..65535"))),
                        None if matches!(f, Field::Null) => None,
                        None => return Err(Error::Invalid(format!("{at}: the label cell is not an integer ({f})"))),
                    },
                };
                progress();
                Ok(Item { image, label })
            })
            .collect();
        items.extend(decoded?);
    }
    if items.is_empty() {
        return Err(Error::format(path, "the parquet file has no rows"));
    }
    Ok(ParquetImages { items, class_names: names })
}

/// Whether a hub parquet file belongs to the test split: `test-00000-of-00001.parquet` or
/// `.../test/0000.parquet`.
pub fn is_test_file(p: &Path) -> bool {
    let starts = |s: Option<&std::ffi::OsStr>| s.is_some_and(|n| n.to_string_lossy().starts_with("test"));
    starts(p.file_name()) || starts(p.parent().and_then(|d| d.file_name()))
}

/// Writes images and labels as a hub-style parquet file (`image: {bytes, path}`, `label:
/// int64`, snappy, ClassLabel names in the `huggingface` metadata), one row group per
/// `rows_per_group` rows. For tests and tools.
pub fn write(path: &Path, pngs: &[Vec<u8>], labels: &[i64], names: &[&str], rows_per_group: usize) -> Result<()> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let err = |e: parquet::errors::ParquetError| Error::format(path, format!("writing parquet: {e}"));
    let schema = parse_message_type(
        "message schema { optional group image { optional binary bytes; optional binary path (STRING); } optional int64 label; }",
    )
    .map_err(err)?;
    let hf = serde_json::json!({"info": {"features": {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": names},
    }}});
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![KeyValue::new("huggingface".into(), hf.to_string())]))
        .build();
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).map_err(err)?;
    for (ims, labs) in pngs.chunks(rows_per_group.max(1)).zip(labels.chunks(rows_per_group.max(1))) {
        let mut rg = w.next_row_group().map_err(err)?;
        // image.bytes: present (definition level 2); image.path: null (level 1); label: level 1.
        let bytes: Vec<ByteArray> = ims.iter().map(|b| ByteArray::from(b.clone())).collect();
        let mut col = rg.next_column().map_err(err)?.expect("image.bytes column");
        col.typed::<ByteArrayType>().write_batch(&bytes, Some(&vec![2; ims.len()]), None).map_err(err)?;
        col.close().map_err(err)?;
        let mut col = rg.next_column().map_err(err)?.expect("image.path column");
        col.typed::<ByteArrayType>().write_batch(&[], Some(&vec![1; ims.len()]), None).map_err(err)?;
        col.close().map_err(err)?;
        let mut col = rg.next_column().map_err(err)?.expect("label column");
        col.typed::<Int64Type>().write_batch(labs, Some(&vec![1; labs.len()]), None).map_err(err)?;
        col.close().map_err(err)?;
        rg.close().map_err(err)?;
    }
    w.close().map_err(err)?;
    Ok(())
}
