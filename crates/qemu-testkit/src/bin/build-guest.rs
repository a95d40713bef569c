//! Builds (or finds) the test guest image for the `qemu-ga` the tests will use
//! (`$QEMU_GA`, else `PATH`), and says what it did. `.ci/run` calls it before
//! the tests of each QEMU version, so that downloads and the build are timed on
//! their own and not inside a test's timeout.
//!
//! ```text
//! cargo run -p qemu-testkit --bin build-guest
//! ```

use std::process::ExitCode;

use qemu_testkit::guest::{build_guest_image, guest_dir};

fn main() -> ExitCode {
    let ga = match qemu_testkit::locate_binary("qemu-ga", qemu_testkit::QEMU_GA_ENV) {
        Ok(ga) => ga,
        Err(e) => {
            eprintln!("build-guest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = guest_dir();
    match build_guest_image(&ga, &dir) {
        Ok(report) => {
            let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            println!(
                "guest image {} (kernel {}, {:.1} MiB; initramfs {:.1} MiB) for {}",
                if report.built { "built" } else { "up to date" },
                report.image.kernel_release,
                mib(size(&report.image.kernel)),
                mib(size(&report.image.initrd)),
                ga.display(),
            );
            println!("  packages: {}", report.packages.join(" "));
            println!(
                "  in {}",
                report.image.initrd.parent().unwrap_or(&dir).display()
            );
            if report.built {
                println!(
                    "  download {:.1} s, build {:.1} s",
                    report.download.as_secs_f64(),
                    report.build.as_secs_f64()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("build-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
