//! noop: boots and powers off at once, printing nothing. What a boot costs with no app
//! at all: the guest LightVM's paper measured as "noop", for `cargo xtask bench boot`
//! and the toolstack's create/destroy tests.

#![no_std]
#![no_main]

kernel::main!(main);

fn main(_args: kernel::Args) {}
