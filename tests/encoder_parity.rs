//! fp32 parity of the exported CLIP-L, T5 and VAE-decoder graphs with transformers / diffusers,
//! on the tiny random-weight fixtures (`tests/fixtures/{clip,t5,vae}`, README there), in every
//! checkpoint layout. ONNX Runtime (CPU, fp32) runs the graphs; the bound ||out−ref||/||ref|| ≤ 1e-5
//! leaves room for fp32 summation-order differences (~1e-7 per op, a few dozen ops deep) and
//! nothing more: a wrong constant, bucket or index shows up at 1e-2 or worse.

mod common;
use common::*;
use fluxbuild::runtime::{Input, Model};
use fluxbuild_exporters::models::GraphOptions;
use serde_json::Value;
use std::path::Path;

const TOLERANCE: f64 = 1e-5;

fn config(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Exports `checkpoint` as `name` and loads the graph.
fn exported(
    name: &str,
    checkpoint: &Path,
    config: Option<&Value>,
    dir: &Path,
) -> (fluxbuild_exporters::models::Analysis, Model) {
    let (analysis, model) = export_submodel(name, checkpoint, config, &GraphOptions::default(), dir)
        .unwrap_or_else(|e| panic!("export of {}: {e:#}", checkpoint.display()));
    (analysis, Model::load(&model).unwrap())
}

fn assert_close(what: &str, got: &ndarray::ArrayD<f32>, want: &ndarray::ArrayD<f32>) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let err = relative_error(got.as_slice().unwrap(), want.as_slice().unwrap());
    println!("{what}: relative error {err:.3e}");
    assert!(err <= TOLERANCE, "{what}: relative error {err:.3e} > {TOLERANCE:e}");
}

#[test]
fn clip_matches_transformers_with_and_without_the_text_model_prefix() {
    let dir = fixtures().join("clip");
    let io = dir.join("io.safetensors");
    let ids = io_tensor::<i64>(&io, "input_ids");
    for (file, layout) in [
        ("model.safetensors", "transformers (text_model. prefix)"),
        ("model_noprefix.safetensors", "transformers"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (analysis, mut model) = exported("clip", &dir.join(file), None, tmp.path());
        assert_eq!(analysis.layout, layout);
        let out = model.run(vec![("input_ids", Input::I64(ids.clone()))]).unwrap();
        assert_close(
            &format!("clip {file} text_embeddings"),
            &out["text_embeddings"],
            &io_tensor(&io, "last_hidden_state"),
        );
        assert_close(
            &format!("clip {file} pooled_embeddings"),
            &out["pooled_embeddings"],
            &io_tensor(&io, "pooler_output"),
        );
    }
}

#[test]
fn t5_matches_transformers_for_every_embedding_name_and_length() {
    let dir = fixtures().join("t5");
    let io = dir.join("io.safetensors");
    for file in ["shared.safetensors", "embed_tokens.safetensors", "both.safetensors"] {
        let tmp = tempfile::tempdir().unwrap();
        let (_, mut model) = exported("t5", &dir.join(file), None, tmp.path());
        for len in [5, 17, 160] {
            let ids = io_tensor::<i64>(&io, &format!("input_ids_L{len}"));
            let out = model.run(vec![("input_ids", Input::I64(ids))]).unwrap();
            let want = io_tensor(&io, &format!("last_hidden_state_L{len}"));
            assert_close(&format!("t5 {file} L={len}"), &out["text_embeddings"], &want);
        }
    }
}

#[test]
fn vae_decoder_matches_diffusers_in_both_layouts() {
    let dir = fixtures().join("vae");
    let io = dir.join("io.safetensors");
    let latent = io_tensor::<f32>(&io, "latent");
    assert_ne!(
        latent.shape()[2],
        latent.shape()[3],
        "the fixture latent should be non-square"
    );
    // ae.safetensors has no config.json beside it, and its tiny channel widths are not FLUX's:
    // the group count comes from --config.
    let diffusers_config = config(&dir.join("diffusers/config.json"));
    for (path, config, layout) in [
        (dir.join("diffusers"), None, "diffusers"),
        (dir.join("ae.safetensors"), Some(&diffusers_config), "ldm"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (analysis, mut model) = exported("vae_decoder", &path, config, tmp.path());
        assert_eq!(analysis.layout, layout);
        let out = model.run(vec![("latent", Input::F32(latent.clone()))]).unwrap();
        assert_close(
            &format!("vae {layout} images"),
            &out["images"],
            &io_tensor(&io, "images"),
        );
    }
}

/// FluxPipeline's unpacking of [B, (h/2)(w/2), 64] latents to [B, 16, h, w]
/// (packed channel = c·4 + dy·2 + dx at token r·(w/2) + col).
fn unpack(packed: &ndarray::ArrayD<f32>, h: usize, w: usize) -> ndarray::ArrayD<f32> {
    let batch = packed.shape()[0];
    ndarray::ArrayD::from_shape_fn(vec![batch, 16, h, w], |i| {
        let (b, c, y, x) = (i[0], i[1], i[2], i[3]);
        packed[[b, (y / 2) * (w / 2) + x / 2, c * 4 + (y % 2) * 2 + x % 2]]
    })
}

#[test]
fn the_pipeline_folders_text_encoders_and_vae_match_the_recorded_flux_pipeline_run() {
    for variant in ["dev", "schnell"] {
        let pipeline = fixtures().join("pipeline").join(variant);
        let reference = pipeline.join("reference.safetensors");
        let tmp = tempfile::tempdir().unwrap();
        // Real tokenizer ids: end-of-text 49407 repeated as padding, the tie the pooling must break.
        let (_, mut clip) = exported("clip", &pipeline, None, &tmp.path().join("clip"));
        let ids = io_tensor::<i64>(&reference, "clip_input_ids");
        let out = clip.run(vec![("input_ids", Input::I64(ids))]).unwrap();
        assert_close(
            &format!("{variant} pipeline pooled_prompt_embeds"),
            &out["pooled_embeddings"],
            &io_tensor(&reference, "pooled_prompt_embeds"),
        );

        let (_, mut t5) = exported("t5", &pipeline, None, &tmp.path().join("t5"));
        let ids = io_tensor::<i64>(&reference, "t5_input_ids");
        let out = t5.run(vec![("input_ids", Input::I64(ids))]).unwrap();
        assert_close(
            &format!("{variant} pipeline prompt_embeds"),
            &out["text_embeddings"],
            &io_tensor(&reference, "prompt_embeds"),
        );

        // decoded = clamp(vae.decode(unpack(latents)/0.3611 + 0.1159)·0.5 + 0.5, 0, 1): the graph is the decode.
        let (_, mut vae) = exported("vae_decoder", &pipeline, None, &tmp.path().join("vae"));
        let latent = unpack(&io_tensor(&reference, "final_latents"), 6, 10).mapv(|z| z / 0.3611 + 0.1159);
        let out = vae.run(vec![("latent", Input::F32(latent))]).unwrap();
        let decoded = out["images"].mapv(|v| (v * 0.5 + 0.5).clamp(0.0, 1.0));
        assert_close(
            &format!("{variant} pipeline decoded"),
            &decoded,
            &io_tensor(&reference, "decoded"),
        );
    }
}

#[test]
fn clip_files_with_position_ids_and_a_text_projection_export_the_same_model() {
    use safetensors::{tensor::TensorView, Dtype};
    // What older transformers files and CLIPTextModelWithProjection checkpoints also hold.
    let dir = fixtures().join("clip");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let position_ids: Vec<u8> = (0..77i64).flat_map(|i| i.to_le_bytes()).collect();
    let projection = vec![0u8; 32 * 32 * 4];
    let mut views: Vec<(String, TensorView)> = st.tensors();
    views.push((
        "text_model.embeddings.position_ids".into(),
        TensorView::new(Dtype::I64, vec![1, 77], &position_ids).unwrap(),
    ));
    views.push((
        "text_projection.weight".into(),
        TensorView::new(Dtype::F32, vec![32, 32], &projection).unwrap(),
    ));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
    let file = tmp.path().join("clip_l.safetensors");
    safetensors::serialize_to_file(views, None, &file).unwrap();

    let (_, mut model) = exported("clip", &file, None, &tmp.path().join("out"));
    let io = dir.join("io.safetensors");
    let out = model
        .run(vec![("input_ids", Input::I64(io_tensor(&io, "input_ids")))])
        .unwrap();
    assert_close(
        "clip with position_ids pooled_embeddings",
        &out["pooled_embeddings"],
        &io_tensor(&io, "pooler_output"),
    );
}
