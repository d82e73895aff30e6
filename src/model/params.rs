//! Named parameter collections.
//!
//! * [`ParamSet`]: an ordered list of named [`Var`]s — trainable parameters that record the
//!   autograd graph (θp, θa or one θh), or fast-weight copies of them.
//! * [`TensorSet`]: an ordered list of named plain [`Tensor`]s — detached values for
//!   graph-free inference, encoder-output caching, or frozen parameter groups.
//!
//! Both implement [`Weights`], the name → tensor lookup that every forward function takes, so
//! the same forward code runs on trainable Vars, on fast weights and on detached tensors.

use super::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// A name → tensor lookup (what forward functions read their weights from).
pub trait Weights {
    /// The tensor stored under `name`, if any.
    fn lookup(&self, name: &str) -> Option<&Tensor>;

    /// The tensor stored under `name`, or [`ModelError::MissingWeight`].
    fn weight(&self, name: &str) -> Result<&Tensor> {
        self.lookup(name)
            .ok_or_else(|| ModelError::MissingWeight(name.to_string()))
    }
}

/// An ordered collection of named, graph-free tensors.
#[derive(Debug, Clone, Default)]
pub struct TensorSet {
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

impl TensorSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from (name, tensor) pairs, rejecting duplicate names.
    pub fn from_pairs<I: IntoIterator<Item = (String, Tensor)>>(pairs: I) -> Result<Self> {
        let mut s = Self::new();
        for (n, t) in pairs {
            s.insert(n, t)?;
        }
        Ok(s)
    }

    /// Appends a tensor; the name must be new.
    pub fn insert(&mut self, name: String, t: Tensor) -> Result<()> {
        if self.index.contains_key(&name) {
            return Err(ModelError::DuplicateName(name));
        }
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, t));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalar values.
    pub fn num_params(&self) -> usize {
        self.entries.iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// New trainable Vars holding copies of these values.
    pub fn to_params(&self) -> Result<ParamSet> {
        ParamSet::from_tensors(self.iter().map(|(n, t)| (n.to_string(), t.clone())))
    }

    /// Writes the set as a safetensors file (atomically).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        save_named(path, self.iter())
    }
}

impl Weights for TensorSet {
    fn lookup(&self, name: &str) -> Option<&Tensor> {
        self.get(name)
    }
}

/// An ordered collection of named trainable [`Var`]s. Cloning shares the Vars (same
/// storage); use [`ParamSet::detached_copy`] for independent fast weights.
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    entries: Vec<(String, Var)>,
    index: HashMap<String, usize>,
}

impl ParamSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// New Vars holding copies of the given tensors (converted to f32, made contiguous).
    pub fn from_tensors<I: IntoIterator<Item = (String, Tensor)>>(pairs: I) -> Result<Self> {
        let mut s = Self::new();
        for (n, t) in pairs {
            // Var::from_tensor would reuse a tensor that already is a Var; copy explicitly so
            // the new set never aliases another one.
            let t = t.detach().to_dtype(DType::F32)?;
            let v = Var::from_tensor(&t.copy()?)?;
            s.insert(n, v)?;
        }
        Ok(s)
    }

    /// Appends a Var (shared, not copied); the name must be new.
    pub fn insert(&mut self, name: String, var: Var) -> Result<()> {
        if self.index.contains_key(&name) {
            return Err(ModelError::DuplicateName(name));
        }
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, var));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalar values.
    pub fn num_params(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The (name, Var) pairs, sharing storage with this set (what an optimiser takes).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.entries.clone()
    }

    /// The same names prefixed with `prefix` (e.g. "enc."), sharing the Vars.
    pub fn named_vars_with_prefix(&self, prefix: &str) -> Vec<(String, Var)> {
        self.entries
            .iter()
            .map(|(n, v)| (format!("{prefix}{n}"), v.clone()))
            .collect()
    }

    /// Independent new Vars with the current values: fast weights for an inner loop.
    /// Their gradients are separate from the originals'.
    pub fn detached_copy(&self) -> Result<ParamSet> {
        let mut s = Self::new();
        for (n, v) in &self.entries {
            s.insert(
                n.clone(),
                Var::from_tensor(&v.as_detached_tensor().copy()?)?,
            )?;
        }
        Ok(s)
    }

    /// The current values as graph-free tensors sharing storage with the Vars (no copy):
    /// forwards over them record no graph. A later in-place update of the Vars is visible
    /// through them, so copy ([`ParamSet::snapshot`]) when a frozen value is needed.
    pub fn detached_tensors(&self) -> TensorSet {
        let mut s = TensorSet::new();
        for (n, v) in &self.entries {
            s.insert(n.clone(), v.as_detached_tensor())
                .expect("names are unique in a ParamSet");
        }
        s
    }

    /// A graph-free copy of the current values.
    pub fn snapshot(&self) -> Result<TensorSet> {
        let mut s = TensorSet::new();
        for (n, v) in &self.entries {
            s.insert(n.clone(), v.as_detached_tensor().copy()?)?;
        }
        Ok(s)
    }

    /// Overwrites every Var with the same-named value of `src` (shapes must match), e.g.
    /// "head_i := adapted head_i" after an inner loop.
    pub fn assign_from(&self, src: &dyn Weights) -> Result<()> {
        for (n, v) in &self.entries {
            let t = src.weight(n)?;
            if t.dims() != v.dims() {
                return Err(ModelError::Invalid(format!(
                    "cannot assign '{n}': shape {:?} into {:?}",
                    t.dims(),
                    v.dims()
                )));
            }
            v.set(&t.detach())?;
        }
        Ok(())
    }

    /// Writes the set as a safetensors file (atomically), with the names as they are.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        save_named(
            path,
            self.entries
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_tensor())),
        )
    }

    /// [`Self::save_safetensors`] with `extra` entries in the file's header metadata.
    pub fn save_safetensors_with_metadata(
        &self,
        path: &Path,
        extra: &[(String, String)],
    ) -> Result<()> {
        save_named_with_metadata(
            path,
            self.entries
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_tensor())),
            extra,
        )
    }

    /// Reads a safetensors file into new Vars, requiring exactly the `expected` (name,
    /// shape) pairs (extra tensors are ignored). Errors name the file, tensor and shape.
    pub fn load_safetensors(
        path: &Path,
        expected: &[(String, Vec<usize>)],
        device: &Device,
    ) -> Result<Self> {
        let tensors = read_safetensors(path, device)?;
        let mut s = Self::new();
        for (name, shape) in expected {
            let t = take_checked(&tensors, path, name, shape)?;
            s.insert(name.clone(), Var::from_tensor(&t)?)?;
        }
        Ok(s)
    }
}

impl Weights for ParamSet {
    fn lookup(&self, name: &str) -> Option<&Tensor> {
        self.get(name).map(|v| v.as_tensor())
    }
}

/// Reads every tensor of a safetensors file (converted to f32 for float tensors).
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        });
    }
    let map =
        candle_core::safetensors::load(path, device).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut out = HashMap::with_capacity(map.len());
    for (n, t) in map {
        let t = match t.dtype() {
            DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
            _ => t,
        };
        out.insert(n, t);
    }
    Ok(out)
}

/// Takes `name` from `tensors`, requiring `shape` and a float dtype.
pub(crate) fn take_checked(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Tensor> {
    let t = tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        expected: shape.to_vec(),
    })?;
    if t.dims() != shape {
        return Err(ModelError::ShapeMismatch {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    if t.dtype() != DType::F32 {
        return Err(ModelError::Safetensors {
            path: path.to_path_buf(),
            message: format!(
                "tensor '{name}' has dtype {:?}, expected a float tensor",
                t.dtype()
            ),
        });
    }
    Ok(t.clone())
}

/// Serialises named tensors to safetensors bytes and writes them atomically.
pub(crate) fn save_named<'a, I: Iterator<Item = (&'a str, &'a Tensor)>>(
    path: &Path,
    items: I,
) -> Result<()> {
    save_named_with_metadata(path, items, &[])
}

/// The string → string metadata of a safetensors file's header.
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bad = |message: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// [`save_named`] with `extra` entries in the header metadata (e.g. a PE method's settings).
pub(crate) fn save_named_with_metadata<'a, I: Iterator<Item = (&'a str, &'a Tensor)>>(
    path: &Path,
    items: I,
    extra: &[(String, String)],
) -> Result<()> {
    let mut data = Vec::new();
    for (n, t) in items {
        // Detached contiguous copies on the CPU: safetensors wants plain row-major bytes.
        let t = t.detach().to_device(&Device::Cpu)?.contiguous()?;
        data.push((n.to_string(), t));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.extend(extra.iter().cloned());
    let bytes = safetensors::serialize(data, Some(meta)).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ParamSet {
        let d = Device::Cpu;
        ParamSet::from_tensors([
            (
                "a.weight".to_string(),
                Tensor::new(&[[1f32, 2.], [3., 4.]], &d).unwrap(),
            ),
            ("a.bias".to_string(), Tensor::new(&[5f32, 6.], &d).unwrap()),
        ])
        .unwrap()
    }

    #[test]
    fn detached_copy_is_independent_and_detached_tensors_share_storage() {
        let p = set();
        let fast = p.detached_copy().unwrap();
        let view = p.detached_tensors();
        let snap = p.snapshot().unwrap();
        p.get("a.bias")
            .unwrap()
            .set(&Tensor::new(&[7f32, 8.], &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(
            fast.get("a.bias").unwrap().to_vec1::<f32>().unwrap(),
            vec![5., 6.]
        );
        assert_eq!(
            snap.get("a.bias").unwrap().to_vec1::<f32>().unwrap(),
            vec![5., 6.]
        );
        assert_eq!(
            view.get("a.bias").unwrap().to_vec1::<f32>().unwrap(),
            vec![7., 8.]
        );
        assert_eq!(p.num_params(), 6);
        assert!(
            ParamSet::from_tensors([
                (
                    "x".to_string(),
                    Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()
                ),
                (
                    "x".to_string(),
                    Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()
                ),
            ])
            .is_err()
        );
    }

    #[test]
    fn safetensors_roundtrip_and_shape_errors_name_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        let p = set();
        p.save_safetensors(&path).unwrap();
        let expected = vec![
            ("a.weight".to_string(), vec![2, 2]),
            ("a.bias".to_string(), vec![2]),
        ];
        let back = ParamSet::load_safetensors(&path, &expected, &Device::Cpu).unwrap();
        assert_eq!(
            back.get("a.weight").unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![1., 2.], vec![3., 4.]]
        );
        let wrong = vec![("a.bias".to_string(), vec![3])];
        let err = ParamSet::load_safetensors(&path, &wrong, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.bias") && err.contains("[3]") && err.contains("p.safetensors"),
            "{err}"
        );
        let missing = vec![("b.bias".to_string(), vec![2])];
        let err = ParamSet::load_safetensors(&path, &missing, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing tensor 'b.bias'"), "{err}");
    }
}
