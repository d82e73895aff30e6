//! The model core: a trainable BERT tagger built only from differentiable operations.
//!
//! * θp — the BERT encoder f ([`bert`]: HF loader/saver, [`encode`]);
//! * θa — one parameter-efficient module g: the paper's bottleneck adapter
//!   `x + up(relu(down(x)))` after the last layer, or any method behind the [`pe`] seam;
//! * θh — one linear NER head h per language ([`head_forward`]);
//! * [`Tagger`] bundles them with explicit [`ParamGroup`]s and a trainable selection.
//!
//! Every forward is a function over named weights ([`Weights`]): the same code runs on the
//! trainable [`ParamSet`] Vars, on fast-weight copies ([`ParamSet::detached_copy`], e.g.
//! priming's inner loop) and on detached [`TensorSet`]s (graph-free inference, caching).
//! Layer norm and softmax are custom ops with hand-written backward kernels ([`ops`]):
//! candle's fused versions have no backward. On the CPU a whole encoder layer is one op
//! ([`layer`]) whose parameter gradients arrive through [`backward`] — take gradients with
//! it, not with `Tensor::backward`.
//!
//! ```no_run
//! use primer::model::{EncoderInputs, ParamGroup, Tagger};
//! use primer::rng::SeededRng;
//! use candle_core::{Device, Tensor};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let mut tagger = Tagger::from_pretrained("models/all-MiniLM-L6-v2".as_ref(), &dev)?;
//! let mut init = SeededRng::derive(0, "init.adapter");
//! tagger.ensure_adapter(64, &mut init)?;
//! tagger.add_head("sw", 7, &mut SeededRng::derive(0, "init.head"))?;
//! tagger.set_trainable(&[ParamGroup::Pe("adapter"), ParamGroup::Head("sw".into())])?;
//! let ids = Tensor::new(&[[101u32, 7592, 102]], &dev)?;
//! let mask = Tensor::new(&[[1u32, 1, 1]], &dev)?;
//! let labels = Tensor::new(&[[-100i64, 1, -100]], &dev)?;
//! let inputs = EncoderInputs { input_ids: &ids, attention_mask: &mask, token_type_ids: None };
//! let mut drop = SeededRng::derive(0, "dropout");
//! let loss = tagger.loss(&inputs, &labels, "sw", Some(&mut drop))?;
//! let grads = primer::model::backward(&loss)?; // only θa and θh receive gradients
//! # let _ = grads; Ok(()) }
//! ```

pub mod attention;
pub mod bert;
pub mod blas;
pub mod config;
pub mod dispatch;
pub mod embeddings;
pub mod error;
pub mod grad;
pub mod init;
pub mod kernels;
pub mod layer;
pub mod ops;
pub mod params;
pub mod pe;
pub mod sgemm;
pub mod tagger;

pub use bert::{
    EncoderInputs, FrozenEncoder, encode, encoder_param_shapes, load_encoder, save_encoder,
};
pub use config::BertConfig;
pub use error::ModelError;
pub use grad::backward;
pub use init::{RandomBertSpec, write_random_bert};
pub use ops::{IGNORE_INDEX, masked_cross_entropy};
pub use params::{ParamSet, TensorSet, Weights};
pub use pe::{PeMethod, PeModule, PeSpec, PeWeights};
pub use tagger::{
    DEFAULT_NUM_LABELS, FinetuneMethod, ParamGroup, Tagger, encoder_output, freeze_encoder,
    head_forward, logits_from_hidden, new_head, tagger_logits,
};
