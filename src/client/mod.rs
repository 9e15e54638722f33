//! A KServe v2 HTTP client for Triton with the binary tensor extension (tensors travel as raw
//! little-endian bytes after the JSON header; BYTES elements as a 4-byte little-endian length
//! followed by the bytes), and (`images`) a generation request in, images out from the `flux` model.

mod http;
mod images;

pub use images::{Deployment, MadeBy, Served};

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
        Tensor {
            name: name.into(),
            datatype: "BYTES".into(),
            shape: shape.to_vec(),
            data,
        }
    }
    /// The elements of a BYTES tensor (each a 4-byte little-endian length, then its bytes).
    pub fn byte_items(&self) -> Result<Vec<&[u8]>> {
        let mut items = Vec::new();
        let mut rest = self.data.as_slice();
        while !rest.is_empty() {
            let (length, tail) = rest.split_first_chunk::<4>().with_context(|| {
                format!(
                    "BYTES tensor `{}`: {} bytes left, less than a length",
                    self.name,
                    rest.len()
                )
            })?;
            let length = u32::from_le_bytes(*length) as usize;
            if length > tail.len() {
                bail!(
                    "BYTES tensor `{}`: an element of {length} bytes with only {} left",
                    self.name,
                    tail.len()
                );
            }
            let (item, tail) = tail.split_at(length);
            items.push(item);
            rest = tail;
        }
        Ok(items)
    }
    pub fn i32(name: &str, shape: &[i64], values: &[i32]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: "INT32".into(),
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn i64(name: &str, shape: &[i64], values: &[i64]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: "INT64".into(),
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn f32(name: &str, shape: &[i64], values: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
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
        if url.starts_with("https://") {
            bail!("--server {url}: https is not supported (Triton's HTTP endpoint is plain http)");
        }
        let rest = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
        let expected = || anyhow!("--server {url}: expected http://HOST:PORT (the server's address, no path)");
        if rest.contains("://") || rest.contains('/') {
            return Err(expected());
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(expected)?;
        let port: u16 = port.parse().map_err(|_| anyhow!("--server {url}: bad port {port:?}"))?;
        if host.is_empty() || port == 0 {
            return Err(expected());
        }
        Ok(Client {
            host: host.to_string(),
            port,
            timeout: Duration::from_secs(600),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Result<http::Response> {
        http::request(&self.host, self.port, method, path, headers, body, self.timeout)
    }

    fn ok(&self, method: &str, path: &str) -> Result<bool> {
        let short = Client {
            timeout: Duration::from_secs(5),
            ..self.clone()
        };
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
        let value: Value =
            serde_json::from_slice(&response.body).with_context(|| format!("{}{path}: not JSON", self.url()))?;
        if response.status != 200 {
            bail!("{}{path}: {} {}", self.url(), response.status, error_text(&value));
        }
        Ok(value)
    }

    /// POST a JSON body, JSON back (the repository index).
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self.call("POST", path, &[], body.to_string().as_bytes())?;
        let value: Value =
            serde_json::from_slice(&response.body).with_context(|| format!("{}{path}: not JSON", self.url()))?;
        if response.status != 200 {
            bail!("{}{path}: {} {}", self.url(), response.status, error_text(&value));
        }
        Ok(value)
    }

    /// GET a text document (Triton's Prometheus metrics).
    pub fn get_text(&self, path: &str) -> Result<String> {
        let response = self.call("GET", path, &[], b"")?;
        if response.status != 200 {
            bail!("{}{path}: {}", self.url(), response.status);
        }
        Ok(String::from_utf8_lossy(&response.body).into_owned())
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
        let value: Value = serde_json::from_slice(&response.body[..json_len]).with_context(|| {
            format!(
                "{}: model {model} answered {} with a body that is not JSON",
                self.url(),
                response.status
            )
        })?;
        if response.status != 200 {
            bail!(
                "model {model} refused the request ({}): {}",
                response.status,
                error_text(&value)
            );
        }
        let mut offset = json_len;
        let mut tensors = Vec::new();
        for output in value["outputs"].as_array().context("the answer has no outputs")? {
            let name = output["name"].as_str().context("an output without a name")?.to_string();
            let size = output["parameters"]["binary_data_size"]
                .as_u64()
                .with_context(|| format!("output {name} is not binary"))? as usize;
            let data = response
                .body
                .get(offset..offset + size)
                .with_context(|| format!("output {name}: body too short"))?
                .to_vec();
            offset += size;
            let shape = output["shape"]
                .as_array()
                .context("shape")?
                .iter()
                .map(|d| d.as_i64().unwrap_or(-1))
                .collect();
            let datatype = output["datatype"].as_str().unwrap_or_default().to_string();
            tensors.push(Tensor {
                name,
                datatype,
                shape,
                data,
            });
        }
        Ok(tensors)
    }
}

fn error_text(value: &Value) -> String {
    value
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::Client;

    #[test]
    fn server_addresses_are_http_host_port() {
        for (url, host, port) in [
            ("http://127.0.0.1:8000", "127.0.0.1", 8000),
            ("triton:18000/", "triton", 18000),
        ] {
            let client = Client::new(url).unwrap();
            assert_eq!((client.host.as_str(), client.port), (host, port), "{url}");
        }
        for (url, why) in [
            ("https://h:1", "https is not supported"),
            ("ftp://h:1", "expected http://HOST:PORT"),
            ("http://h:1/v2", "expected http://HOST:PORT"),
            ("http://:1", "expected http://HOST:PORT"),
            ("http://h:0", "expected http://HOST:PORT"),
            ("http://h", "expected http://HOST:PORT"),
            ("http://h:port", "bad port \"port\""),
        ] {
            let error = Client::new(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"))
                .to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
    }
}
