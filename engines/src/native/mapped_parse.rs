//! The ONNX parse of a TensorRT-RTX build with the weights left in their file: the graph
//! (`model.onnx`: every large initializer lives in external data) goes to
//! `IParser::loadModelProto`, and each external initializer to `IParser::loadInitializer` as a
//! pointer into the memory-mapped data file (`model.onnx.data`), then `parseModelProto`. The
//! network's weights then point into the page cache: the parser keeps no buffer of its own.
//! (Measured: the same peak memory as `parseFromFile`, which in TensorRT-RTX 1.7 maps the data
//! file itself; the builder's copy and the serialized plan are what cost memory, and weightless
//! builds, which need this raw parser for `setBuilderConfig`, avoid both.)
//!
//! trtx 0.9.1 wraps only `parse`/`parseFromFile`, so this drives trtx_sys's raw `IParser` over the
//! network trtx created. The parser, the network it fills and the mappings its weights point into
//! are kept together in [`MappedParser`], which drops them in that order.

use anyhow::{anyhow, bail, Context, Result};
use cxx::UniquePtr;
use fluxbuild_onnx::{parse_model, pb};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use trtx::trtx_sys::nvinfer1::{IBuilderConfig, INetworkDefinition};
use trtx::trtx_sys::nvonnxparser::IParser;
use trtx::{BuilderConfig, LogHandler, NetworkDefinition, Severity};

/// A parsed network whose weights point into memory-mapped files. Fields drop in declaration
/// order: the parser (which owns the network's small converted weights), the network, then the
/// mappings and the log bridge the parser reports through.
pub struct MappedParser<'builder> {
    parser: UniquePtr<IParser>,
    network: NetworkDefinition<'builder>,
    weights: Vec<Mmap>,
    _log: LogBridge,
}

impl<'builder> MappedParser<'builder> {
    /// Parses `onnx` into `network`: the graph from the file, each external initializer from a
    /// mapping of its data file (its `location`, `offset` and `length`, checked against the file).
    /// With `weightless` (a config with kSTRIP_PLAN and kREFIT_INDIVIDUAL), the weights of MatMul,
    /// Gemm and Conv become placeholders (see [`Self::parse_with_placeholders`]).
    pub fn parse(
        onnx: &Path,
        network: NetworkDefinition<'builder>,
        parser_lib: &Path,
        log: Box<dyn LogHandler>,
        weightless: Option<&BuilderConfig<'_>>,
    ) -> Result<Self> {
        let graph = std::fs::read(onnx).with_context(|| format!("{}: cannot read", onnx.display()))?;
        let model = parse_model(onnx, &graph)?;
        let folder = onnx.parent().unwrap_or(Path::new("."));
        let (weights, initializers) = map_external_data(&model, folder)?;
        drop(model);

        let log = LogBridge::new(log)?;
        let network_ptr = network_pointer(&network)?;
        let parser = create_parser(parser_lib, network_ptr, log.interface())?;
        let mut this = MappedParser {
            parser,
            network,
            weights,
            _log: log,
        };
        let path = CString::new(onnx.as_os_str().as_encoded_bytes())
            .map_err(|_| anyhow!("{}: path contains a NUL byte", onnx.display()))?;
        // SAFETY: `graph` outlives the call (the parser copies the proto); `path` is a C string.
        let loaded = unsafe {
            this.parser
                .pin_mut()
                .loadModelProto(graph.as_ptr().cast(), graph.len(), path.as_ptr())
        };
        if !loaded {
            bail!("{}: loadModelProto failed{}", onnx.display(), this.errors());
        }
        for (name, (map, offset, length)) in &initializers {
            let name_c =
                CString::new(name.as_str()).map_err(|_| anyhow!("initializer {name:?} contains a NUL byte"))?;
            let data = this.weights[*map][*offset..*offset + *length].as_ptr();
            // SAFETY: `data..data+length` lies inside a mapping that `this` keeps alive longer than
            // the parser (field order); the parser only reads it.
            let ok = unsafe {
                this.parser
                    .pin_mut()
                    .loadInitializer(name_c.as_ptr(), data.cast(), *length)
            };
            if !ok {
                bail!(
                    "{}: the parser refused initializer {name} ({length} bytes from the external data){}",
                    onnx.display(),
                    this.errors()
                );
            }
        }
        let parsed = match weightless {
            Some(config) => this.parse_with_placeholders(config)?,
            None => this.parser.pin_mut().parseModelProto(),
        };
        if !parsed {
            bail!("parsing {}{}", onnx.display(), this.errors());
        }
        Ok(this)
    }

    /// TensorRT-RTX's parser, told the builder config (kSTRIP_PLAN + kREFIT_INDIVIDUAL) and given a
    /// refit observer, turns the initializers of MatMul/Gemm/Conv into placeholder weights (type
    /// and count, no values): the builder then never reads them, and they are left out of the
    /// plan, to be refitted at deploy time. This is the one weightless mode TensorRT-RTX 1.7
    /// compiles without a GPU (kSTRIP_PLAN with kREFIT_IDENTICAL or kREFIT fails in Myelin on a
    /// CUDA check).
    fn parse_with_placeholders(&mut self, config: &BuilderConfig<'_>) -> Result<bool> {
        let config: *const IBuilderConfig = debug_pointer(&format!("{config:?}"))?.cast();
        // SAFETY: `config` is the live IBuilderConfig behind trtx's BuilderConfig, which the
        // caller keeps for the build; the observer lives across the parse and is detached before
        // it is destroyed.
        unsafe {
            if !self.parser.pin_mut().setBuilderConfig(config) {
                bail!("the ONNX parser refused the builder config{}", self.errors());
            }
            let observer = trtx::trtx_sys::trtx_create_refitter_observer(std::ptr::null_mut(), ignore_record);
            if observer.is_null() {
                bail!("creating the parser's refit observer failed");
            }
            trtx::trtx_sys::trtx_parser_set_refit_observer(self.parser.as_mut_ptr(), observer);
            let parsed = self.parser.pin_mut().parseModelProto();
            trtx::trtx_sys::trtx_parser_set_refit_observer(self.parser.as_mut_ptr(), std::ptr::null_mut());
            trtx::trtx_sys::trtx_destroy_refitter_observer(observer);
            Ok(parsed)
        }
    }

    pub fn network_mut(&mut self) -> &mut NetworkDefinition<'builder> {
        &mut self.network
    }

    /// The parser's own error list, one per line, for an error message.
    fn errors(&mut self) -> String {
        let parser = self.parser.as_mut_ptr().cast::<c_void>();
        let mut said = String::new();
        // SAFETY: `parser` is a live IParser; each error and its description belong to it and are
        // read before the next parser call.
        unsafe {
            for index in 0..trtx::trtx_sys::parser_get_nb_errors(parser) {
                let error = trtx::trtx_sys::parser_get_error(parser, index);
                if error.is_null() {
                    continue;
                }
                let desc = trtx::trtx_sys::parser_error_desc(error);
                if !desc.is_null() {
                    said.push_str("\n  ");
                    said.push_str(&CStr::from_ptr(desc).to_string_lossy());
                }
            }
        }
        said
    }
}

/// Name -> (mapping index, offset, length) of each initializer stored in external data, and
/// the mappings (one per data file).
type Initializers = BTreeMap<String, (usize, usize, usize)>;

fn map_external_data(model: &pb::ModelProto, folder: &Path) -> Result<(Vec<Mmap>, Initializers)> {
    let mut files: BTreeMap<String, usize> = BTreeMap::new();
    let mut maps = Vec::new();
    let mut initializers = BTreeMap::new();
    let external = pb::tensor_proto::DataLocation::EXTERNAL;
    for tensor in &model.graph.get_or_default().initializer {
        if tensor.data_location.enum_value() != Ok(external) {
            continue;
        }
        let field = |key: &str| fluxbuild_onnx::external_field(tensor, key);
        let location = field("location")
            .ok_or_else(|| anyhow!("initializer {}: external data without a location", tensor.name))?;
        let number = |key: &str| -> Result<Option<usize>> {
            field(key)
                .map(|v| {
                    v.parse()
                        .map_err(|_| anyhow!("initializer {}: external {key} {v:?} is not a number", tensor.name))
                })
                .transpose()
        };
        let index = match files.get(location) {
            Some(&index) => index,
            None => {
                let path = folder.join(location);
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("{}: cannot open (external data of {})", path.display(), tensor.name))?;
                // SAFETY: the mapping is read-only; fluxbuild never writes an export's data file
                // in place (exports are written to a temporary name and renamed), so its bytes
                // do not change under the mapping while the build reads them.
                maps.push(unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?);
                files.insert(location.to_string(), maps.len() - 1);
                maps.len() - 1
            }
        };
        let size = maps[index].len();
        let offset = number("offset")?.unwrap_or(0);
        let length = number("length")?.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            bail!(
                "initializer {}: external data {location} bytes {offset}..{} lie past the file's end ({size} bytes)",
                tensor.name,
                offset.saturating_add(length)
            );
        }
        initializers.insert(tensor.name.clone(), (index, offset, length));
    }
    Ok((maps, initializers))
}

/// The `INetworkDefinition*` behind trtx's network. trtx 0.9.1 keeps its C++ pointers
/// crate-private and prints them (hex) in its Debug output, the only public way to them; trtx is
/// pinned to =0.9.1 in Cargo.toml so that format cannot change under us, and a format that does
/// not match is an error.
fn network_pointer(network: &NetworkDefinition<'_>) -> Result<*mut INetworkDefinition> {
    Ok(debug_pointer(&format!("{network:?}"))?.cast())
}

/// The parser makes placeholders only while an observer is attached; the records (which ONNX
/// initializers feed which engine weight) are not kept: the deployment refits by ONNX name.
unsafe extern "C" fn ignore_record(_user: *mut c_void, _record: *const trtx::trtx_sys::RefitRecord) {}

/// The object pointer trtx 0.9.1 prints as `inner: "<hex>"` in a wrapper's Debug output.
fn debug_pointer(shown: &str) -> Result<*mut c_void> {
    let address = shown
        .split_once("inner: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .and_then(|(hex, _)| usize::from_str_radix(hex, 16).ok())
        .filter(|&address| address != 0)
        .ok_or_else(|| anyhow!("trtx's NetworkDefinition no longer shows its pointer ({shown}); update engines/src/native/mapped_parse.rs"))?;
    Ok(address as *mut c_void)
}

/// A raw `IParser` over `network`, created by the parser library's factory (as trtx does).
fn create_parser(lib: &Path, network: *mut INetworkDefinition, logger: *mut c_void) -> Result<UniquePtr<IParser>> {
    type Factory = unsafe extern "C" fn(*mut INetworkDefinition, *mut c_void, u32) -> *mut c_void;
    // SAFETY: the library is the TensorRT-RTX ONNX parser the probe found and trtx already loaded
    // (this adds a reference to the same handle); the symbol has the factory's C signature.
    let parser = unsafe {
        let library = libloading::Library::new(lib).with_context(|| format!("loading {}", lib.display()))?;
        let factory: libloading::Symbol<Factory> = library
            .get(b"createNvOnnxParser_INTERNAL")
            .with_context(|| format!("{}: no createNvOnnxParser_INTERNAL", lib.display()))?;
        let parser = factory(network, logger, trtx::trtx_sys::get_nvonnxparser_version());
        // trtx holds its own reference to the library for the life of the process.
        std::mem::forget(library);
        parser.cast::<IParser>()
    };
    if parser.is_null() {
        bail!("{}: creating the ONNX parser failed", lib.display());
    }
    // SAFETY: a fresh IParser the factory handed over; UniquePtr deletes it (virtual destructor).
    Ok(unsafe { UniquePtr::from_raw(parser) })
}

/// An ILogger for the raw parser, forwarding to a [`LogHandler`] (trtx's Logger keeps its
/// interface pointer crate-private).
struct LogBridge {
    bridge: *mut trtx::trtx_sys::RustLoggerBridge,
    handler: *mut Box<dyn LogHandler>,
}

impl LogBridge {
    fn new(handler: Box<dyn LogHandler>) -> Result<Self> {
        let handler = Box::into_raw(Box::new(handler));
        // SAFETY: `handler` stays valid until Drop, which destroys the bridge first.
        let bridge = unsafe { trtx::trtx_sys::create_rust_logger_bridge(forward, handler.cast()) };
        if bridge.is_null() {
            // SAFETY: not handed to anyone.
            drop(unsafe { Box::from_raw(handler) });
            bail!("creating the TensorRT logger bridge failed");
        }
        Ok(LogBridge { bridge, handler })
    }

    fn interface(&self) -> *mut c_void {
        // SAFETY: a live bridge.
        unsafe { trtx::trtx_sys::get_logger_interface(self.bridge) }
    }
}

impl Drop for LogBridge {
    fn drop(&mut self) {
        // SAFETY: created in `new`; the bridge goes first so no callback sees a freed handler.
        unsafe {
            trtx::trtx_sys::destroy_rust_logger_bridge(self.bridge);
            drop(Box::from_raw(self.handler));
        }
    }
}

unsafe extern "C" fn forward(user_data: *mut c_void, severity: i32, message: *const c_char) {
    // Never unwind into C++.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `user_data` is the handler LogBridge keeps alive; `message` a C string.
        let (handler, message) = unsafe { (&*user_data.cast::<Box<dyn LogHandler>>(), CStr::from_ptr(message)) };
        let severity = match severity {
            0 => Severity::InternalError,
            1 => Severity::Error,
            2 => Severity::Warning,
            3 => Severity::Info,
            _ => Severity::Verbose,
        };
        handler.log(severity, &message.to_string_lossy());
    });
}
