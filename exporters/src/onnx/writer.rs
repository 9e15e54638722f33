//! Serializing a `Graph` to `model.onnx` plus an external data file `model.onnx.data`.
//!
//! Weights are streamed one at a time from the checkpoint mapping into the data file (each
//! starting on a 4096-byte boundary so runtimes can map them, and padded to one so that they go
//! to the disk with O_DIRECT, bypassing the page cache), hashed on the way. Both files are written under
//! temporary names and renamed only when everything succeeded: no half-written model is left.

use super::encode::{encode_plan, ConversionStats, Encoded};
use super::ir::{Graph, InitData, Initializer};
use super::pagebuf::{PageBuf, PAGE};
use anyhow::{Context, Result};
use fluxbuild_contract::files::{hex, sha256_file, AtomicFile};
use fluxbuild_onnx::{encode, external_tensor, inline_tensor, model_proto, pb, Outline};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DATA_ALIGNMENT: u64 = PAGE as u64;
/// Checkpoint bytes written as they are go through a staging buffer of this size.
const STAGING: usize = 8 << 20;
/// Initializers at most this large stay inside the protobuf.
const INLINE_LIMIT: usize = 1024;
/// Writes at least this large are hashed on a thread of their own while they are written.
const HASH_BESIDE_WRITE: usize = 1 << 20;

/// What was written, for manifests.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WrittenModel {
    pub model: PathBuf,
    pub model_sha256: String,
    pub model_bytes: u64,
    pub data: PathBuf,
    pub data_sha256: String,
    pub data_bytes: u64,
    pub initializers: usize,
    pub nodes: usize,
    /// Tensors whose values were saturated converting to a narrower float type.
    pub saturated: Vec<(String, u64)>,
}

/// Progress callback: (initializer name, bytes just written).
pub type Progress<'p> = &'p mut dyn FnMut(&str, u64);

/// Writes `graph` as `dir/model.onnx` + `dir/model.onnx.data`.
pub fn write_model(graph: &Graph<'_>, dir: &Path, progress: Progress<'_>) -> Result<WrittenModel> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let model_path = dir.join("model.onnx");
    let data_path = dir.join("model.onnx.data");
    let data_name = "model.onnx.data";

    let mut data = DataFile::create(&data_path, true)?;
    let mut tensors = Vec::with_capacity(graph.initializers.len());
    let mut saturated = Vec::new();
    let order = in_source_order(graph);
    // One thread converts initializer i+1 (reading ahead from disk) while this one hashes and
    // writes initializer i; the channel holds one, so at most three tensors are in memory.
    std::thread::scope(|s| -> Result<()> {
        let (encoded_tx, encoded) = std::sync::mpsc::sync_channel(1);
        let order = &order;
        s.spawn(move || {
            for (i, init) in order.iter().copied().enumerate() {
                if let Some(next) = order.get(i + 1).copied() {
                    for_each_part(next, |t| t.prefetch());
                }
                for_each_part(init, |t| t.populate());
                let result = encode_initializer(init).with_context(|| format!("writing initializer {}", init.name));
                if let Ok((Encoded::Owned(_), _)) = &result {
                    for_each_part(init, |t| t.release()); // converted: the source pages are done
                }
                let failed = result.is_err();
                if encoded_tx.send(result).is_err() || failed {
                    break;
                }
            }
        });
        for init in order.iter().copied() {
            let (bytes, stats) = encoded.recv().context("the encoding thread stopped")??;
            let tensor = write_initializer(init, &bytes, &mut data, data_name)
                .with_context(|| format!("writing initializer {}", init.name))?;
            drop(bytes);
            for_each_part(init, |t| t.release());
            if stats.saturated > 0 {
                saturated.push((init.name.clone(), stats.saturated));
            }
            progress(&init.name, init.byte_len() as u64);
            tensors.push(tensor);
        }
        Ok(())
    })?;
    let (data_file, data_sha256, data_bytes) = data.finish();

    let outline = Outline {
        name: &graph.name,
        opset: graph.opset,
        inputs: &graph.inputs,
        outputs: &graph.outputs,
        nodes: &graph.nodes,
        metadata: &graph.metadata,
    };
    let bytes = encode(&model_proto(&outline, tensors)).context("serializing ONNX protobuf")?;
    let mut model_file = AtomicFile::create(&model_path)?;
    model_file.write_all(&bytes)?;
    data_file.commit()?;
    model_file.commit()?;
    Ok(WrittenModel {
        model_sha256: sha256_file(&model_path)?,
        model_bytes: bytes.len() as u64,
        model: model_path,
        data: data_path,
        data_sha256,
        data_bytes,
        initializers: graph.initializers.len(),
        nodes: graph.nodes.len(),
        saturated,
    })
}

/// The initializer's bytes in its element type, checked against its dims.
fn encode_initializer<'a>(init: &'a Initializer<'a>) -> Result<(Encoded<'a>, ConversionStats)> {
    let (bytes, stats) = match &init.data {
        InitData::Bytes(bytes) => (Encoded::Borrowed(bytes.as_slice()), ConversionStats::default()),
        InitData::Weights(plan) => encode_plan(plan, init.elem)?,
    };
    anyhow::ensure!(
        bytes.len() == init.byte_len(),
        "produced {} bytes, dims {:?} of {:?} need {}",
        bytes.len(),
        init.dims,
        init.elem,
        init.byte_len()
    );
    Ok((bytes, stats))
}

fn for_each_part(init: &Initializer<'_>, f: impl Fn(&crate::checkpoint::TensorRef<'_>)) {
    if let InitData::Weights(plan) = &init.data {
        plan.parts.iter().for_each(|p| f(&p.tensor));
    }
}

/// The TensorProto of `init`: small ones inline, the rest appended to the data file.
fn write_initializer(
    init: &Initializer<'_>,
    bytes: &Encoded<'_>,
    data: &mut DataFile,
    data_name: &str,
) -> Result<pb::TensorProto> {
    let tensor = if bytes.len() <= INLINE_LIMIT {
        inline_tensor(&init.name, init.elem, &init.dims, bytes.to_vec())
    } else {
        let offset = data.append(bytes)?;
        external_tensor(&init.name, init.elem, &init.dims, data_name, offset, bytes.len())
    };
    Ok(tensor)
}

/// The external data file: every tensor starts on a page boundary and is zero-padded to the
/// next, so page-aligned buffers go to the disk by O_DIRECT (no copy into the page cache,
/// which costs more than the conversion itself); ordinary writes where O_DIRECT is refused.
struct DataFile {
    file: AtomicFile,
    direct: bool,
    hasher: Sha256,
    len: u64,
    /// For bytes not in a page-aligned buffer (checkpoint bytes written as they are).
    staging: Option<PageBuf>,
}

impl DataFile {
    fn create(path: &Path, direct: bool) -> Result<DataFile> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        let direct_options = {
            let mut o = options.clone();
            std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_DIRECT);
            o
        };
        let (file, direct) = match direct.then(|| AtomicFile::create_with(path, &direct_options)) {
            Some(Ok(file)) => (file, true),
            _ => (AtomicFile::create_with(path, &options)?, false),
        };
        Ok(DataFile {
            file,
            direct,
            hasher: Sha256::new(),
            len: 0,
            staging: None,
        })
    }

    /// Appends `bytes` at the next page boundary; returns their offset.
    fn append(&mut self, bytes: &Encoded<'_>) -> Result<u64> {
        let offset = self.len;
        match bytes {
            Encoded::Owned(buf) => self.write_pages(buf.padded())?,
            Encoded::Borrowed(bytes) => {
                let mut staging = self.staging.take().unwrap_or_else(|| PageBuf::zeroed(STAGING));
                for piece in bytes.chunks(STAGING) {
                    staging[..piece.len()].copy_from_slice(piece);
                    let padded = piece.len().next_multiple_of(PAGE);
                    staging[piece.len()..padded].fill(0);
                    self.write_pages(&staging[..padded])?;
                }
                self.staging = Some(staging);
            }
        }
        Ok(offset)
    }

    fn write_pages(&mut self, pages: &[u8]) -> Result<()> {
        // The hash (about 1.2 GB/s, one core) runs beside the write rather than before it: in a
        // row, the two were the critical path of a full-size export.
        let (hasher, file) = (&mut self.hasher, &mut self.file);
        let written = if pages.len() < HASH_BESIDE_WRITE {
            hasher.update(pages);
            file.write_all(pages)
        } else {
            std::thread::scope(|s| {
                s.spawn(|| hasher.update(pages));
                file.write_all(pages)
            })
        };
        match written {
            // Some file systems open O_DIRECT files but refuse the writes: carry on buffered.
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = false;
                self.file
                    .set_direct(false)
                    .context("turning off O_DIRECT on the model data file")?;
                self.file.write_all(pages).context("writing the model data file")?;
            }
            result => result.context("writing the model data file")?,
        }
        self.len += pages.len() as u64;
        Ok(())
    }

    /// (the file, to commit; hex sha256 of its content; its length)
    fn finish(self) -> (AtomicFile, String, u64) {
        (self.file, hex(&self.hasher.finalize()), self.len)
    }
}

/// Initializers in the order their bytes lie in the checkpoint (constants first): the checkpoint
/// is then read front to back once, and the manifest's input hash, reading the same files in the
/// same order on another thread, finds the pages still cached instead of reading them again.
fn in_source_order<'g, 'a>(graph: &'g Graph<'a>) -> Vec<&'g Initializer<'a>> {
    let mut order: Vec<&Initializer<'a>> = graph.initializers.iter().collect();
    order.sort_by_cached_key(|init| match &init.data {
        InitData::Bytes(_) => None,
        InitData::Weights(plan) => plan
            .parts
            .first()
            .map(|p| (p.tensor.file.path.clone(), p.tensor.info.start)),
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// O_DIRECT and ordinary writes give the same file, offsets and hash.
    #[test]
    fn direct_and_buffered_data_files_agree() {
        let dir = tempfile::tempdir().unwrap();
        let borrowed: Vec<u8> = (0..STAGING + 5000).map(|i| (i * 7) as u8).collect();
        let owned = PageBuf::from_slice(&[3u8; 10_000]);
        let mut results = vec![];
        for direct in [true, false] {
            let path = dir.path().join(format!("data_{direct}"));
            let mut data = DataFile::create(&path, direct).unwrap();
            let offsets = [
                data.append(&Encoded::Borrowed(&borrowed)).unwrap(),
                data.append(&Encoded::Owned(PageBuf::from_slice(&owned))).unwrap(),
            ];
            let (file, sha, len) = data.finish();
            file.commit().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, len);
            assert_eq!(sha, hex(&Sha256::digest(&bytes)));
            assert_eq!(&bytes[..borrowed.len()], &borrowed[..]);
            assert_eq!(&bytes[offsets[1] as usize..][..owned.len()], &owned[..]);
            assert!(offsets.iter().all(|o| o % DATA_ALIGNMENT == 0));
            results.push((bytes, offsets, sha));
        }
        assert!(results[0] == results[1]);
    }
}
