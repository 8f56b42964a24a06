//! Placeholder for the main job until the training example lands: prints the
//! ISA report and a conversion demo through the public API.

use halfkern::{Backend, Isa, bf16, f16};

fn main() -> Result<(), halfkern::Error> {
    println!("halfkern ISA report");
    for isa in Isa::ALL {
        let mark = if isa.is_available() { "yes" } else { "no" };
        println!("  {:<11} {mark}", isa.name());
    }
    println!("selected: {}", Isa::selected()?);

    let src = [
        1.0f32,
        1.0 + 1.0 / 256.0,
        core::f32::consts::PI,
        65_520.0,
        1e-8,
        f32::NAN,
    ];
    let mut b = [bf16::ZERO; 6];
    let mut h = [f16::ZERO; 6];
    halfkern::convert(&src, &mut b)?;
    halfkern::convert(&src, &mut h)?;
    println!("{:>14} {:>14} {:>14}", "f32", "bf16", "f16");
    for ((x, b), h) in src.iter().zip(&b).zip(&h) {
        println!("{x:>14e} {:>14e} {:>14e}", b.to_f32(), h.to_f32());
    }
    let _ = Backend::best();
    Ok(())
}
