//! The boundary to the C++ shims (src/shim/): each entry point catches C++ exceptions and hands back
//! null, or the message as a malloc'd string (src/shim/errors.h), which these helpers turn into Rust errors.

use std::ffi::{CStr, c_char};

use tch::Tensor;
use torch_sys::C_tensor;

unsafe extern "C" {
    fn lejepa_dist_free_string(s: *mut c_char); // free(), in src/shim/distributed.cpp
}

/// Takes a string the shim malloc'd.
pub fn take_string(s: *mut c_char) -> String {
    if s.is_null() {
        return "unknown error".into();
    }
    // SAFETY: the shim hands out NUL-terminated malloc'd strings and we free each once.
    let text = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
    unsafe { lejepa_dist_free_string(s) };
    text
}

/// A shim's status: null, or a malloc'd message (a C++ exception it caught).
pub fn shim_status(error: *mut c_char) -> Result<(), String> {
    if error.is_null() { Ok(()) } else { Err(take_string(error)) }
}

/// Calls a shim that writes a new tensor to its out-pointer and returns null, or a malloc'd message.
pub fn tensor_from_shim(call: impl FnOnce(*mut *mut C_tensor) -> *mut c_char) -> Result<Tensor, String> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let error = call(&mut out);
    if !error.is_null() {
        return Err(take_string(error));
    }
    // SAFETY: on success the shim handed over a new at::Tensor, owned from here on.
    Ok(unsafe { Tensor::from_ptr(out) })
}
