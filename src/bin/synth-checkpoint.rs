//! `synth-checkpoint`: writes a full-size checkpoint of random values with the real tensor
//! names and shapes, for benchmarks (no real weights can be downloaded here). Streams: the
//! header is computed from the shapes, then each tensor is generated and written in 8 MiB
//! pieces, so memory stays small whatever the size.
//!
//! Names come from the reference TSVs: `name_pattern / shape / count` files (`{i}` runs over
//! 0..count) or the VAE's two-column name map (`--column diffusers|bfl_ae`).

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use fluxbuild::generate::noise::SplitMix64;
use fluxbuild_contract::files::AtomicFile;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Write a random-valued safetensors checkpoint with the names and shapes of a reference TSV")]
struct Args {
    /// A `name_pattern\tshape\tcount` TSV or the VAE's `diffusers\tbfl_ae` name map.
    #[arg(long)]
    names: PathBuf,
    /// Which name column of a name map to use.
    #[arg(long, default_value = "diffusers")]
    column: String,
    /// Element type: BF16, F16 or F32.
    #[arg(long, default_value = "BF16")]
    dtype: String,
    /// Prefix for every key (e.g. `model.diffusion_model.`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Clamp every `{i}` count (a smaller file with the same widths, for quick runs).
    #[arg(long)]
    max_count: Option<usize>,
    /// Replace the `{i}` count FROM by TO (repeatable): `--count 19=1 --count 38=2` gives the
    /// FLUX.1 transformer with 1 double and 2 single blocks at full width.
    #[arg(long = "count", value_name = "FROM=TO", value_parser = parse_count)]
    counts: Vec<(usize, usize)>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output .safetensors file (written atomically).
    #[arg(long, required_unless_present = "size_only")]
    out: Option<PathBuf>,
    /// Only print the file size the arguments give, in bytes.
    #[arg(long)]
    size_only: bool,
}

struct Spec {
    name: String,
    shape: Vec<usize>,
}

fn parse_count(text: &str) -> Result<(usize, usize)> {
    let (from, to) = text.split_once('=').context("expected FROM=TO, e.g. 19=1")?;
    Ok((from.trim().parse()?, to.trim().parse()?))
}

fn parse_shape(text: &str) -> Result<Vec<usize>> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| Ok(s.trim().parse()?))
        .collect()
}

fn read_specs(args: &Args) -> Result<Vec<Spec>> {
    let text =
        std::fs::read_to_string(&args.names).with_context(|| format!("{}: cannot read", args.names.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let mut specs = Vec::new();
    if header.first() == Some(&"name_pattern") {
        let mut patterns = std::collections::BTreeSet::new();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let [pattern, shape, count] = line.split('\t').collect::<Vec<_>>()[..] else {
                bail!("{}: bad line {line:?}", args.names.display());
            };
            ensure!(
                !pattern.contains("{i}") || patterns.insert(pattern.to_string()),
                "{}: pattern {pattern} repeats with other shapes, so its indices are ambiguous (use the name map)",
                args.names.display()
            );
            let shape = parse_shape(shape)?;
            let count: usize = count.parse()?;
            if pattern.contains("{i}") {
                let count = args
                    .counts
                    .iter()
                    .find(|(from, _)| *from == count)
                    .map_or(count, |(_, to)| *to);
                for i in 0..args.max_count.map_or(count, |m| count.min(m)) {
                    specs.push(Spec {
                        name: pattern.replace("{i}", &i.to_string()),
                        shape: shape.clone(),
                    });
                }
            } else {
                specs.push(Spec {
                    name: pattern.to_string(),
                    shape,
                });
            }
        }
    } else {
        let column = header.iter().position(|h| *h == args.column).with_context(|| {
            format!(
                "{}: no column `{}` (columns: {})",
                args.names.display(),
                args.column,
                header.join(", ")
            )
        })?;
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split('\t').collect();
            ensure!(
                fields.len() == 2 * header.len(),
                "{}: bad line {line:?}",
                args.names.display()
            );
            specs.push(Spec {
                name: fields[column].to_string(),
                shape: parse_shape(fields[header.len() + column])?,
            });
        }
    }
    for s in &mut specs {
        s.name.insert_str(0, &args.prefix);
    }
    Ok(specs)
}

/// Random bit patterns of modest magnitude (|x| in [2⁻⁷, 2⁻³)), never NaN or infinite.
struct Values {
    words: SplitMix64,
}

impl Values {
    fn next(&mut self) -> u64 {
        self.words.next_u64()
    }

    fn bf16(bits: u16) -> u16 {
        let sign = bits & 0x8000;
        let exponent = 120 + (bits >> 7) % 4; // biased 120..123
        sign | (exponent << 7) | (bits & 0x7f)
    }

    fn fill(&mut self, dtype: &str, out: &mut [u8]) {
        match dtype {
            "BF16" => {
                for chunk in out.chunks_exact_mut(8) {
                    let r = self.next();
                    for (k, pair) in chunk.chunks_exact_mut(2).enumerate() {
                        pair.copy_from_slice(&Self::bf16((r >> (16 * k)) as u16).to_le_bytes());
                    }
                }
            }
            "F32" => {
                for chunk in out.chunks_exact_mut(8) {
                    let r = self.next();
                    for (k, word) in chunk.chunks_exact_mut(4).enumerate() {
                        let value =
                            (Self::bf16((r >> (32 * k)) as u16) as u32) << 16 | ((r >> (32 * k + 16)) as u32 & 0xffff);
                        word.copy_from_slice(&value.to_le_bytes());
                    }
                }
            }
            "F16" => {
                for chunk in out.chunks_exact_mut(8) {
                    let r = self.next();
                    for (k, pair) in chunk.chunks_exact_mut(2).enumerate() {
                        let bits = (r >> (16 * k)) as u16;
                        let exponent = 8 + (bits >> 10) % 4; // biased 8..11
                        pair.copy_from_slice(&((bits & 0x8000) | (exponent << 10) | (bits & 0x3ff)).to_le_bytes());
                    }
                }
            }
            _ => unreachable!(),
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let size = match args.dtype.as_str() {
        "BF16" | "F16" => 2,
        "F32" => 4,
        other => bail!("--dtype {other}: expected BF16, F16 or F32"),
    };
    let specs = read_specs(&args)?;
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "format": "pt", "generator": "fluxbuild synth-checkpoint" }),
    );
    let mut offset = 0usize;
    for s in &specs {
        let bytes = s.shape.iter().product::<usize>() * size;
        let entry =
            serde_json::json!({ "dtype": args.dtype, "shape": s.shape, "data_offsets": [offset, offset + bytes] });
        ensure!(
            header.insert(s.name.clone(), entry).is_none(),
            "tensor {} listed twice",
            s.name
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header)?;
    header.resize(header.len().next_multiple_of(8), b' '); // the format aligns the data to 8 bytes
    if args.size_only {
        println!("{}", 8 + header.len() + offset);
        return Ok(());
    }
    let out = args.out.as_deref().expect("clap requires --out");

    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    let mut file = BufWriter::with_capacity(8 << 20, AtomicFile::create(out)?);
    file.write_all(&(header.len() as u64).to_le_bytes())?;
    file.write_all(&header)?;
    let mut values = Values {
        words: SplitMix64::new(args.seed),
    };
    let mut buf = vec![0u8; 8 << 20];
    for s in &specs {
        let mut left = s.shape.iter().product::<usize>() * size;
        while left > 0 {
            let n = left.min(buf.len());
            values.fill(&args.dtype, &mut buf[..n.next_multiple_of(8)]);
            file.write_all(&buf[..n])?;
            left -= n;
        }
    }
    file.into_inner().map_err(|e| e.into_error())?.commit()?;
    eprintln!("{}: {} tensors, {} bytes of data", out.display(), specs.len(), offset);
    Ok(())
}
