//! A KServe v2 HTTP client for Triton with the binary tensor extension (tensors travel as raw
//! little-endian bytes after the JSON header; BYTES elements as a 4-byte little-endian length
//! followed by the bytes), and `generate`: prompts in, images out from the `flux` model.

mod http;
mod png_out;

pub use png_out::write_pngs;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// One tensor of a request or a response.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    /// KServe datatype: BYTES, UINT8, INT32, INT64, FP32, ...
    pub datatype: String,
    pub shape: Vec<i64>,
    /// Raw little-endian bytes (BYTES: length-prefixed elements).
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn bytes(name: &str, shape: &[i64], items: &[&[u8]]) -> Tensor {
        let mut data = Vec::new();
        for item in items {
            data.extend_from_slice(&(item.len() as u32).to_le_bytes());
            data.extend_from_slice(item);
        }
        Tensor { name: name.into(), datatype: "BYTES".into(), shape: shape.to_vec(), data }
    }
    pub fn i32(name: &str, shape: &[i64], values: &[i32]) -> Tensor {
        Tensor { name: name.into(), datatype: "INT32".into(), shape: shape.to_vec(), data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }
    pub fn i64(name: &str, shape: &[i64], values: &[i64]) -> Tensor {
        Tensor { name: name.into(), datatype: "INT64".into(), shape: shape.to_vec(), data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }
    pub fn f32(name: &str, shape: &[i64], values: &[f32]) -> Tensor {
        Tensor { name: name.into(), datatype: "FP32".into(), shape: shape.to_vec(), data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }
}

/// A Triton server's HTTP endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    host: String,
    port: u16,
    /// Bound on every request (an image on a CPU server can take a while).
    pub timeout: Duration,
}

impl Client {
    /// `http://HOST:PORT` (or `HOST:PORT`).
    pub fn new(url: &str) -> Result<Client> {
        let rest = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
        if url.starts_with("https://") {
            bail!("--server {url}: https is not supported (Triton's HTTP endpoint is plain http)");
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| anyhow!("--server {url}: expected http://HOST:PORT"))?;
        let port: u16 = port.parse().map_err(|_| anyhow!("--server {url}: bad port {port:?}"))?;
        Ok(Client { host: host.to_string(), port, timeout: Duration::from_secs(600) })
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Result<http::Response> {
        http::request(&self.host, self.port, method, path, headers, body, self.timeout)
    }

    fn ok(&self, method: &str, path: &str) -> Result<bool> {
        let short = Client { timeout: Duration::from_secs(5), ..self.clone() };
        Ok(short.call(method, path, &[], b"")?.status == 200)
    }

    pub fn live(&self) -> Result<bool> {
        self.ok("GET", "/v2/health/live")
    }
    pub fn ready(&self) -> Result<bool> {
        self.ok("GET", "/v2/health/ready")
    }
    pub fn model_ready(&self, model: &str) -> Result<bool> {
        self.ok("GET", &format!("/v2/models/{model}/ready"))
    }

    /// GET a JSON document (config, stats, repository index).
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let response = self.call("GET", path, &[], b"")?;
        let value: Value = serde_json::from_slice(&response.body).with_context(|| format!("{}{path}: not JSON", self.url()))?;
        if response.status != 200 {
            bail!("{}{path}: {} {}", self.url(), response.status, error_text(&value));
        }
        Ok(value)
    }

    /// POST to the repository API (`load` / `unload`; needs `--model-control-mode=explicit`).
    pub fn repository(&self, model: &str, action: &str) -> Result<()> {
        let response = self.call("POST", &format!("/v2/repository/models/{model}/{action}"), &[], b"")?;
        if response.status != 200 {
            let value: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            bail!("{action} of model {model} failed: {}", error_text(&value));
        }
        Ok(())
    }

    /// One inference request; outputs come back in binary.
    pub fn infer(&self, model: &str, inputs: &[Tensor], outputs: &[&str]) -> Result<Vec<Tensor>> {
        let header = json!({
            "inputs": inputs.iter().map(|t| json!({
                "name": t.name, "datatype": t.datatype, "shape": t.shape,
                "parameters": { "binary_data_size": t.data.len() },
            })).collect::<Vec<_>>(),
            "outputs": outputs.iter().map(|name| json!({ "name": name, "parameters": { "binary_data": true } })).collect::<Vec<_>>(),
        });
        let header = serde_json::to_vec(&header)?;
        let mut body = header.clone();
        for t in inputs {
            body.extend_from_slice(&t.data);
        }
        let headers = [
            ("Content-Type", "application/octet-stream".to_string()),
            ("Inference-Header-Content-Length", header.len().to_string()),
        ];
        let response = self.call("POST", &format!("/v2/models/{model}/infer"), &headers, &body)?;
        let json_len = match response.header("inference-header-content-length") {
            Some(n) => n.parse::<usize>().context("bad Inference-Header-Content-Length")?,
            None => response.body.len(),
        };
        let json_len = json_len.min(response.body.len());
        let value: Value = serde_json::from_slice(&response.body[..json_len])
            .with_context(|| format!("{}: model {model} answered {} with a body that is not JSON", self.url(), response.status))?;
        if response.status != 200 {
            bail!("model {model} refused the request ({}): {}", response.status, error_text(&value));
        }
        let mut offset = json_len;
        let mut tensors = Vec::new();
        for output in value["outputs"].as_array().context("the answer has no outputs")? {
            let name = output["name"].as_str().context("an output without a name")?.to_string();
            let size = output["parameters"]["binary_data_size"].as_u64().with_context(|| format!("output {name} is not binary"))? as usize;
            let data = response.body.get(offset..offset + size).with_context(|| format!("output {name}: body too short"))?.to_vec();
            offset += size;
            let shape = output["shape"].as_array().context("shape")?.iter().map(|d| d.as_i64().unwrap_or(-1)).collect();
            let datatype = output["datatype"].as_str().unwrap_or_default().to_string();
            tensors.push(Tensor { name, datatype, shape, data });
        }
        Ok(tensors)
    }
}

fn error_text(value: &Value) -> String {
    value.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| value.to_string())
}

/// What `fluxbuild generate --server` asks for; unset fields take the deployment's defaults.
#[derive(Clone, Debug, Default)]
pub struct ImageRequest {
    pub prompts: Vec<String>,
    pub height: Option<u32>,
    pub width: Option<u32>,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    /// Prompt i uses seed + i (fluxbuild noise v1).
    pub seed: u64,
    pub max_sequence_length: Option<u32>,
    /// [prompts, 16, height/8, width/8] initial latents, replacing the seeded noise.
    pub noise: Option<Vec<f32>>,
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Client {
    /// One request to `flux` with all of `request.prompts`.
    pub fn generate(&self, request: &ImageRequest) -> Result<Vec<Image>> {
        let n = request.prompts.len();
        if n == 0 {
            bail!("no prompt given");
        }
        let shape = [n as i64, 1];
        let items: Vec<&[u8]> = request.prompts.iter().map(|p| p.as_bytes()).collect();
        let mut inputs = vec![Tensor::bytes("prompt", &shape, &items)];
        let repeat_i32 = |name: &str, v: Option<u32>| v.map(|v| Tensor::i32(name, &shape, &vec![v as i32; n]));
        inputs.extend(repeat_i32("height", request.height));
        inputs.extend(repeat_i32("width", request.width));
        inputs.extend(repeat_i32("steps", request.steps));
        inputs.extend(repeat_i32("max_sequence_length", request.max_sequence_length));
        if let Some(g) = request.guidance {
            inputs.push(Tensor::f32("guidance", &shape, &vec![g; n]));
        }
        let seeds: Vec<i64> = (0..n).map(|i| request.seed.wrapping_add(i as u64) as i64).collect();
        inputs.push(Tensor::i64("seed", &shape, &seeds));
        if let Some(noise) = &request.noise {
            let per = noise.len() / n.max(1);
            let (h, w) = (request.height.context("noise needs --height")? / 8, request.width.context("noise needs --width")? / 8);
            if per != 16 * (h * w) as usize || noise.len() % n != 0 {
                bail!("noise has {} values, expected {n} x 16 x {h} x {w}", noise.len());
            }
            inputs.push(Tensor::f32("noise", &[n as i64, 16, h as i64, w as i64], noise));
        }
        let outputs = self.infer("flux", &inputs, &["image"])?;
        let image = outputs.into_iter().find(|t| t.name == "image").context("flux answered without an image")?;
        let [count, height, width, 3] = image.shape[..] else {
            bail!("flux answered an image of shape {:?}, expected [{n}, H, W, 3]", image.shape);
        };
        if count as usize != n || image.datatype != "UINT8" || image.data.len() != (count * height * width * 3) as usize {
            bail!("flux answered {} {:?} image bytes for {n} prompts", image.datatype, image.shape);
        }
        let per = (height * width * 3) as usize;
        Ok(image
            .data
            .chunks_exact(per)
            .map(|p| Image { width: width as usize, height: height as usize, pixels: p.to_vec() })
            .collect())
    }

    /// `flux`'s max_batch_size: the most prompts one request may carry.
    pub fn max_batch(&self) -> Result<usize> {
        if !self.live().unwrap_or(false) {
            bail!("the Triton server at {} is not answering (is it running? `fluxbuild serve --repo REPO`)", self.url());
        }
        if !self.model_ready("flux")? {
            bail!("the Triton server at {} is up but its model `flux` is not ready (see the server log)", self.url());
        }
        let config = self.get_json("/v2/models/flux/config")?;
        Ok(config["max_batch_size"].as_u64().unwrap_or(1).max(1) as usize)
    }

    /// All prompts, as requests of at most the model's batch size, `concurrency` in flight at once;
    /// images in prompt order (prompt i keeps seed + i however the requests are cut).
    pub fn generate_many(&self, request: &ImageRequest, concurrency: usize) -> Result<Vec<Image>> {
        let max_batch = self.max_batch()?;
        let n = request.prompts.len();
        let per_request = n.div_ceil(concurrency.max(1)).clamp(1, max_batch);
        let chunks: Vec<(usize, ImageRequest)> = (0..n)
            .step_by(per_request)
            .map(|start| {
                let end = (start + per_request).min(n);
                let mut part = request.clone();
                part.prompts = request.prompts[start..end].to_vec();
                part.seed = request.seed.wrapping_add(start as u64);
                part.noise = request.noise.as_ref().map(|noise| {
                    let per = noise.len() / n;
                    noise[start * per..end * per].to_vec()
                });
                (start, part)
            })
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..concurrency.max(1).min(chunks.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((start, part)) = chunks.get(i) else { break };
                    let result = self.generate(part).with_context(|| format!("prompts {}..{}", start, start + part.prompts.len()));
                    results.lock().expect("no panics").push((*start, result));
                });
            }
        });
        let mut results = results.into_inner().expect("no panics");
        results.sort_by_key(|(start, _)| *start);
        let mut images = Vec::with_capacity(n);
        for (_, result) in results {
            images.extend(result?);
        }
        Ok(images)
    }
}
