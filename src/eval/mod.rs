//! Evaluation with the paper's protocols. Frozen backbone: features once, then a linear probe
//! (LayerNorm + Linear, AdamW wd 1e-6, warm-up + cosine), few-shot probes over several seeds, and
//! DINO's weighted k-NN, all on feature matrices. Full fine-tuning of the backbone: [`finetune`].

pub mod finetune;

use anyhow::{Result, ensure};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{Device, Kind, Tensor, nn};

use crate::data::Split;
use crate::data::augment::MultiCrop;
use crate::data::loader::eval_batch;
use crate::models::Backbone;
use crate::models::LinearProbe;
use crate::optim::AdamW;
use crate::optim::schedule::learning_rate;

/// Which features a backbone gives for evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureKind {
    /// What the linear probe reads: the last two blocks, concatenated (ViT: class tokens; ResNet: pooled).
    Probe,
    /// The pooled embedding (ViT: final-norm class token).
    Embedding,
}

/// Features `[N, D]` (f32, CPU) of a split's evaluation views, backbone in eval mode. Images are
/// decoded a batch at a time: only the features are held.
pub fn features(backbone: &Backbone, split: &Split, crop: &MultiCrop, kind: FeatureKind, device: Device) -> Result<Tensor> {
    let mut chunks = Vec::new();
    for start in (0..split.len()).step_by(256) {
        let views = eval_batch(split, start..(start + 256).min(split.len()), crop)?;
        let out = tch::no_grad(|| backbone.forward(&views.to_device(device), false));
        let f = match kind {
            FeatureKind::Probe => out.probe,
            FeatureKind::Embedding => out.embedding,
        };
        chunks.push(f.to_kind(Kind::Float).to_device(Device::Cpu));
    }
    Ok(Tensor::cat(&chunks, 0))
}

/// Raw-pixel features: the normalised evaluation views, flattened.
pub fn pixel_features(split: &Split, crop: &MultiCrop) -> Result<Tensor> {
    let chunks = (0..split.len())
        .step_by(1024)
        .map(|start| Ok(eval_batch(split, start..(start + 1024).min(split.len()), crop)?.flatten(1, -1)))
        .collect::<Result<Vec<Tensor>>>()?;
    Ok(Tensor::cat(&chunks, 0))
}

/// Top-1 accuracy, balanced accuracy (mean per-class recall) and macro-F1, as fractions.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Scores {
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub macro_f1: f64,
}

pub fn scores(predicted: &[i64], truth: &[i64], classes: usize) -> Scores {
    let mut confusion = vec![vec![0usize; classes]; classes]; // [truth][predicted]
    for (&p, &t) in predicted.iter().zip(truth) {
        confusion[t as usize][p as usize] += 1;
    }
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let present: Vec<usize> = (0..classes).filter(|&c| confusion[c].iter().sum::<usize>() > 0).collect();
    let recall = |c: usize| confusion[c][c] as f64 / confusion[c].iter().sum::<usize>() as f64;
    let precision = |c: usize| {
        let predicted_c: usize = (0..classes).map(|t| confusion[t][c]).sum();
        if predicted_c == 0 { 0.0 } else { confusion[c][c] as f64 / predicted_c as f64 }
    };
    let f1 = |c: usize| {
        let (p, r) = (precision(c), recall(c));
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    };
    Scores {
        accuracy: correct as f64 / truth.len() as f64,
        balanced_accuracy: present.iter().map(|&c| recall(c)).sum::<f64>() / present.len() as f64,
        macro_f1: present.iter().map(|&c| f1(c)).sum::<f64>() / present.len() as f64,
    }
}

/// Linear-probe training settings (reference: AdamW, wd 1e-6, warm-up + cosine).
#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings { epochs: 100, batch_size: 256, lr: 1e-2, weight_decay: 1e-6, seed: 0 }
    }
}

/// Trains LayerNorm + Linear on frozen features and returns the test predictions.
pub fn linear_probe(train: &Tensor, train_labels: &[i64], test: &Tensor, classes: usize, settings: ProbeSettings) -> Result<Vec<i64>> {
    let n = train.size()[0] as usize;
    ensure!(n > 0 && n == train_labels.len(), "{n} training features for {} labels", train_labels.len());
    tch::manual_seed(settings.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let probe = LinearProbe::new(&vs.root(), train.size()[1], classes as i64);
    let params = vs.variables().into_iter().collect();
    let mut optimizer = AdamW::new(params, settings.weight_decay);
    let labels = Tensor::from_slice(train_labels);
    let batch = settings.batch_size.min(n);
    let steps_per_epoch = n.div_ceil(batch);
    let total = (steps_per_epoch * settings.epochs) as u64;
    let warmup = (total / 10).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut step = 0;
    for _ in 0..settings.epochs {
        let mut order: Vec<i64> = (0..n as i64).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch) {
            let index = Tensor::from_slice(chunk);
            optimizer.zero_grad();
            let logits = probe.forward(&train.index_select(0, &index));
            logits.cross_entropy_for_logits(&labels.index_select(0, &index)).backward();
            optimizer.step(learning_rate(step, total, warmup, settings.lr, 1e-3));
            step += 1;
        }
    }
    let predicted = tch::no_grad(|| probe.forward(test).argmax(-1, false));
    Ok(Vec::<i64>::try_from(predicted)?)
}

/// DINO's weighted k-NN: cosine similarity, the k nearest training samples vote with weight
/// exp(similarity / temperature).
pub fn knn(train: &Tensor, train_labels: &[i64], test: &Tensor, classes: usize, k: usize, temperature: f64) -> Result<Vec<i64>> {
    let train = train.to_kind(Kind::Float);
    let normalize = |x: &Tensor| x / x.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
    let (train, test) = (normalize(&train), normalize(&test.to_kind(Kind::Float)));
    let labels = Tensor::from_slice(train_labels);
    let k = k.min(train_labels.len()) as i64;
    let mut predictions = Vec::new();
    for chunk in test.split(1024, 0) {
        let similarity = chunk.matmul(&train.transpose(0, 1)); // [B, N_train]
        let (top, index) = similarity.topk(k, 1, true, true);
        let votes = Tensor::zeros([chunk.size()[0], classes as i64], (Kind::Float, Device::Cpu));
        let neighbour_labels = labels.index_select(0, &index.flatten(0, -1)).view([-1, k]);
        let votes = votes.scatter_add(1, &neighbour_labels, &(top / temperature).exp());
        predictions.extend(Vec::<i64>::try_from(votes.argmax(1, false))?);
    }
    Ok(predictions)
}

/// Indices of exactly `shots` training samples per class (fewer where a class has fewer), drawn with `seed`.
pub fn few_shot_indices(labels: &[i64], classes: usize, shots: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = Vec::new();
    for class in 0..classes as i64 {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng);
        chosen.extend(members.into_iter().take(shots));
    }
    chosen.sort_unstable();
    chosen
}

/// Mean and (population) standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_hand_computed_values() {
        // truth: 0 0 0 1 1 2; predicted: 0 0 1 1 1 0
        let s = scores(&[0, 0, 1, 1, 1, 0], &[0, 0, 0, 1, 1, 2], 3);
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((s.balanced_accuracy - (2.0 / 3.0 + 1.0 + 0.0) / 3.0).abs() < 1e-12);
        // F1: class 0: p 2/3, r 2/3 → 2/3; class 1: p 2/3, r 1 → 0.8; class 2: 0.
        assert!((s.macro_f1 - (2.0 / 3.0 + 0.8) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn few_shot_draws_exactly_k_per_class() {
        let labels: Vec<i64> = (0..300).map(|i| i % 7).collect();
        for shots in [1, 2, 5, 10] {
            let chosen = few_shot_indices(&labels, 7, shots, 3);
            for class in 0..7 {
                assert_eq!(chosen.iter().filter(|&&i| labels[i] == class).count(), shots);
            }
            assert_ne!(chosen, few_shot_indices(&labels, 7, shots, 4), "seeds draw different samples");
        }
    }

    #[test]
    fn features_that_encode_the_label_are_probed_perfectly() {
        tch::manual_seed(0);
        let labels: Vec<i64> = (0..400).map(|i| i % 5).collect();
        let one_hot = Tensor::from_slice(&labels).one_hot(5).to_kind(Kind::Float);
        let noise = Tensor::randn([400, 27], (Kind::Float, Device::Cpu));
        let features = Tensor::cat(&[one_hot * 3.0, noise * 0.3], 1);
        let (train, test) = (features.narrow(0, 0, 300), features.narrow(0, 300, 100));
        let settings = ProbeSettings { epochs: 30, ..Default::default() };
        let predicted = linear_probe(&train, &labels[..300], &test, 5, settings).unwrap();
        assert_eq!(scores(&predicted, &labels[300..], 5).accuracy, 1.0);
        let predicted = knn(&train, &labels[..300], &test, 5, 20, 0.07).unwrap();
        assert_eq!(scores(&predicted, &labels[300..], 5).accuracy, 1.0);
    }
}
