//! The file formats igpt reads and writes, in one place and below the model: checkpoint
//! tensors and their dtypes (`tensor`), safetensors files (`st_file`), `torch.save` pickles
//! (`pickle`, a restricted unpickler), HF model directories (`model_dir`) and atomic writes
//! (`atomic`). Layering: `atomic` and `tensor` are leaves; `st_file` and `pickle` use them;
//! `model_dir` uses both readers.

pub mod atomic;
pub mod model_dir;
pub mod pickle;
pub mod st_file;
pub mod tensor;

pub use atomic::write_atomic;
pub use model_dir::read_model_dir;
pub use st_file::{read_safetensors, write_safetensors, write_safetensors_raw};
pub use tensor::{Tensor, TensorMap, is_buffer_key};
