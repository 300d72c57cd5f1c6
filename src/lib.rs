//! lejepa: LeJEPA self-supervised image pretraining (Balestriero & LeCun 2025, arXiv 2511.08544)
//! on libtorch. The method is two files: [`sigreg`] and [`objective`].
pub mod cli;
pub mod autocast;
pub mod data;
pub mod diagnostics;
pub mod distributed;
pub mod eval;
pub mod export;
pub mod ffi;
pub mod mkl_dispatch;
pub mod models;
pub mod npy;
pub mod objective;
pub mod optim;
pub mod pictures;
pub mod select;
pub mod sigreg;
pub mod train;
