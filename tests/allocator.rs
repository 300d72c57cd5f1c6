//! The allocator settings of a training run (`memory::run_fast`): a step's buffers, freed and
//! allocated again at the next step, must come back without the kernel faulting their pages in
//! afresh. The expectation is counted from the buffer size: one minor fault per 4 KiB page touched.
//! Its own test binary without the test harness: mallopt settings are process-wide, and the
//! harness runs tests on spawned threads, whose arenas map large buffers whatever the settings;
//! training runs its steps on the main thread, as this does.

use lejepa::train::memory::{measure_live_memory, minor_page_faults, run_fast};
use tch::{Kind, Tensor};

const ELEMENTS: i64 = 16 << 20; // 64 MiB of f32: above glibc's largest mmap threshold (32 MiB)
const PAGES: u64 = (ELEMENTS as u64 * 4) / 4096;

/// Minor faults of allocating and filling a fresh 64 MiB tensor, after one such tensor was freed.
fn faults_of_a_second_step() -> u64 {
    drop(Tensor::ones([ELEMENTS], (Kind::Float, tch::Device::Cpu)));
    let before = minor_page_faults();
    let again = Tensor::ones([ELEMENTS], (Kind::Float, tch::Device::Cpu));
    let faults = minor_page_faults() - before;
    drop(again);
    faults
}

fn main() {
    if minor_page_faults() == 0 {
        eprintln!("no /proc/self/stat here: nothing to check");
        return;
    }
    // Measuring: large buffers are mapped on allocation and returned on free, so every page of
    // the second tensor is faulted in again (that is what makes resident memory measure live data).
    measure_live_memory();
    let measuring = faults_of_a_second_step();
    assert!(measuring >= PAGES * 9 / 10, "measuring settings: {measuring} faults for {PAGES} pages");

    // Running: the freed buffer stays in the heap and is reused, with (almost) no faults.
    run_fast();
    let _ = faults_of_a_second_step(); // the first one under these settings grows the heap
    let running = faults_of_a_second_step();
    assert!(running < PAGES / 20, "running settings: {running} faults for {PAGES} pages (expected almost none)");
    println!("allocator: measuring settings {measuring} faults, running settings {running}, for {PAGES} pages: ok");
}
