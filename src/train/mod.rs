//! Training: optimizer, schedule, checkpoints and the training loop.

pub mod optim;
