//! The digit classifier behind the image metrics: it must reach ≥ 95 %
//! held-out accuracy on the vendored 8×8 digits, and the Fréchet distance in
//! its feature space must order held-out real digits < blurred digits < noise.

use scoregen::app::commands::classify::labelled_splits;
use scoregen::data::{ImageOptions, Points};
use scoregen::nets::ClassifierSpec;
use scoregen::rng::Rng;
use scoregen::train::classifier::image_report;
use scoregen::train::classifier::{train_classifier, ClassifierTraining, Labelled, TrainedClassifier};

/// A 16-channel CNN, 400 Adam steps of 64 images: a few seconds on one core.
fn digit_classifier() -> (Labelled, Labelled, TrainedClassifier) {
    scoregen::init();
    let (train, test, shape) = labelled_splits("digits", &ImageOptions::default()).unwrap();
    let spec = ClassifierSpec {
        classes: 10,
        dim: 64,
        image_shape: shape,
        width: 16,
        noise_aware: false,
        embed_dim: 0,
        embed_scale: 0.0,
        seed: 0,
    };
    let opts = ClassifierTraining { steps: 400, batch_size: 64, lr: 3e-3, seed: 0, noise: None, quiet: true };
    let trained = train_classifier(&train, &test, &spec, &opts).unwrap();
    (train, test, trained)
}

/// Each 8×8 image averaged with its 4 neighbours (clamped at the border).
fn blur(x: &Points) -> Points {
    let mut out = x.data.clone();
    for (k, img) in x.rows().enumerate() {
        for i in 0..8i32 {
            for j in 0..8i32 {
                let at = |a: i32, b: i32| img[(a.clamp(0, 7) * 8 + b.clamp(0, 7)) as usize];
                out[k * 64 + (i * 8 + j) as usize] =
                    (at(i, j) + at(i - 1, j) + at(i + 1, j) + at(i, j - 1) + at(i, j + 1)) / 5.0;
            }
        }
    }
    Points::new(x.n, x.d, out)
}

#[test]
fn digit_classifier_accuracy_and_frechet_ordering() {
    let (train, test, trained) = digit_classifier();
    assert!(trained.test_accuracy >= 0.95, "held-out accuracy {}", trained.test_accuracy);
    let clf = &trained.classifier;
    let real = image_report(&test.points, &train, &test, clf).unwrap();
    let blurred = image_report(&blur(&test.points), &train, &test, clf).unwrap();
    let mut rng = Rng::new(1, 0);
    let noise = Points::new(test.points.n, 64, (0..test.points.n * 64).map(|_| rng.uniform() * 2.0 - 1.0).collect());
    let noise = image_report(&noise, &train, &test, clf).unwrap();
    // Held-out real images are the floor itself; blur and noise are far above it
    // (measured: 0.29, 2.16, 5.45).
    assert!((real.fd - real.fd_floor).abs() < 1e-9, "{} vs {}", real.fd, real.fd_floor);
    assert!(blurred.fd > 3.0 * real.fd, "blurred {} vs real {}", blurred.fd, real.fd);
    assert!(noise.fd > 1.5 * blurred.fd, "noise {} vs blurred {}", noise.fd, blurred.fd);
    // Real digits: nearly uniform classes, confident predictions, no copying.
    assert!(real.class_entropy > 0.97 * real.max_entropy, "{}", real.class_entropy);
    assert!(real.mean_confidence > noise.mean_confidence, "{} vs {}", real.mean_confidence, noise.mean_confidence);
    assert!((real.memorization_ratio - 1.0).abs() < 1e-12);
    // Copies of training images are caught by the nearest-neighbour ratio.
    let copies = image_report(&train.points.head(100), &train, &test, clf).unwrap();
    assert_eq!(copies.memorization_ratio, 0.0);
}
