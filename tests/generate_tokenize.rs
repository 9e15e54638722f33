//! Token ids exactly as FluxPipeline's CLIPTokenizer / T5TokenizerFast give them (recorded in the
//! pipeline fixtures, from the real CLIP-L and T5 vocabularies).

mod generate_common;

use fluxbuild::generate::tokenize::PromptTokenizer;
use generate_common::Reference;

#[test]
fn a_photo_of_a_cat() {
    let r = Reference::load("dev");
    let prompt = vec!["a photo of a cat".to_string()];
    let clip = PromptTokenizer::clip(&r.dir.join("tokenizer/tokenizer.json"))
        .unwrap()
        .encode(&prompt)
        .unwrap();
    let mut want = vec![49406, 320, 1125, 539, 320, 2368];
    want.resize(77, 49407);
    assert_eq!(clip.ids, want);
    let t5 = PromptTokenizer::t5(&r.dir.join("tokenizer_2/tokenizer.json"), 12)
        .unwrap()
        .encode(&prompt)
        .unwrap();
    assert_eq!(t5.ids, vec![3, 9, 1202, 13, 3, 9, 1712, 1, 0, 0, 0, 0]);
    assert!(clip.warnings.is_empty() && t5.warnings.is_empty());
}

#[test]
fn batch_matches_the_pipeline_with_truncation_reported() {
    for variant in ["dev", "schnell"] {
        let r = Reference::load(variant);
        let prompts = r.prompts();
        let clip = PromptTokenizer::clip(&r.dir.join("tokenizer/tokenizer.json"))
            .unwrap()
            .encode(&prompts)
            .unwrap();
        assert_eq!(clip.ids, r.i64("clip_input_ids").1, "{variant} CLIP ids");
        assert!(clip.warnings.is_empty(), "{:?}", clip.warnings);

        let length = r.usize("max_sequence_length");
        let t5_tok = PromptTokenizer::t5(&r.dir.join("tokenizer_2/tokenizer.json"), length).unwrap();
        let t5 = t5_tok.encode(&prompts).unwrap();
        assert_eq!(t5.ids, r.i64("t5_input_ids").1, "{variant} T5 ids");
        // the lighthouse prompt is 36 T5 tokens with </s>; 32 fit
        assert_eq!(t5.warnings.len(), 1, "{:?}", t5.warnings);
        assert!(
            t5.warnings[0].starts_with("prompt 1:") && t5.warnings[0].contains("4 of its 36 T5 tokens"),
            "{}",
            t5.warnings[0]
        );
    }
}

#[test]
fn long_clip_prompts_keep_the_end_token() {
    let r = Reference::load("dev");
    let long = vec!["cat ".repeat(100)];
    let clip = PromptTokenizer::clip(&r.dir.join("tokenizer/tokenizer.json"))
        .unwrap()
        .encode(&long)
        .unwrap();
    assert_eq!(clip.ids.len(), 77);
    assert_eq!((clip.ids[0], clip.ids[76]), (49406, 49407));
    assert!(
        clip.warnings[0].contains("25 of its 102 CLIP tokens"),
        "{}",
        clip.warnings[0]
    );
}

#[test]
fn a_broken_tokenizer_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{}").unwrap();
    let err = format!("{:#}", PromptTokenizer::clip(&path).err().unwrap());
    assert!(err.contains("tokenizer.json") && err.contains("CLIP"), "{err}");
}
