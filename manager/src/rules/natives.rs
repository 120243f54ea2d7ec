//! The `registers::` functions rules call, and the throttles `once_within` / `accumulate`.

use super::{lock, to_json, to_rhai, FnResult, Shared};
use registers::Registers;
use rhai::{Dynamic, EvalAltResult, Map, Module, INT};

fn reg_err(e: registers::RegisterError) -> Box<EvalAltResult> {
    e.to_string().into()
}

/// Note that the running rule wrote `key` (for its hit in the history and the monitor).
fn wrote(ctx: &Shared, key: &str) {
    let mut c = lock(ctx);
    if c.wrote.len() < bus::monitor::MAX_WROTE && !c.wrote.iter().any(|k| k == key) {
        c.wrote.push(key.to_string());
    }
}

pub(super) fn registers_module(store: Registers, ctx: Shared) -> Module {
    let mut m = Module::new();
    let r = store.clone();
    m.set_native_fn("get", move |key: &str| -> FnResult<Dynamic> {
        match r.get(key).map_err(reg_err)? {
            Some(v) => to_rhai(&v),
            None => Ok(Dynamic::UNIT),
        }
    });
    let (r, c) = (store.clone(), ctx.clone());
    m.set_native_fn("set", move |key: &str, value: Dynamic| -> FnResult<()> {
        wrote(&c, key);
        r.set(key, &to_json(&value)?).map_err(reg_err)
    });
    let (r, c) = (store.clone(), ctx.clone());
    m.set_native_fn("incr", move |key: &str, by: INT| -> FnResult<INT> {
        wrote(&c, key);
        r.incr(key, by).map_err(reg_err)
    });
    let (r, c) = (store.clone(), ctx.clone());
    m.set_native_fn("incr", move |key: &str| -> FnResult<INT> {
        wrote(&c, key);
        r.incr(key, 1).map_err(reg_err)
    });
    let (r, c) = (store.clone(), ctx.clone());
    m.set_native_fn("del", move |key: &str| -> FnResult<bool> {
        wrote(&c, key);
        r.del(key).map_err(reg_err)
    });
    let r = store.clone();
    m.set_native_fn("keys", move |prefix: &str| -> FnResult<rhai::Array> {
        let keys = r.keys(prefix).map_err(reg_err)?;
        Ok(keys.into_iter().map(Dynamic::from).collect())
    });
    let (r, c) = (store.clone(), ctx.clone());
    m.set_native_fn(
        "expire",
        move |key: &str, secs: Dynamic| -> FnResult<bool> {
            wrote(&c, key);
            r.expire(key, seconds(&secs)?).map_err(reg_err)
        },
    );
    let (r, c) = (store.clone(), ctx.clone());
    m.set_native_fn(
        "window",
        move |key: &str, value: Dynamic, secs: Dynamic| -> FnResult<Map> {
            wrote(&c, key);
            let v = number(&value, "window value")?;
            let w = r.window(key, v, seconds(&secs)?).map_err(reg_err)?;
            let mut out = Map::new();
            out.insert("count".into(), (w.count as INT).into());
            out.insert("sum".into(), w.sum.into());
            out.insert("avg".into(), w.avg.into());
            out.insert("min".into(), w.min.into());
            out.insert("max".into(), w.max.into());
            Ok(out)
        },
    );
    let (r, c) = (store.clone(), ctx.clone());
    m.set_native_fn("mark", move |key: &str| -> FnResult<()> {
        wrote(&c, key);
        r.mark(key).map_err(reg_err)
    });
    let r = store.clone();
    m.set_native_fn("seen", move |key: &str, secs: Dynamic| -> FnResult<bool> {
        r.seen(key, seconds(&secs)?).map_err(reg_err)
    });
    m.set_native_fn("once_within", once_within_fn(store.clone(), ctx.clone()));
    m.set_native_fn("accumulate", accumulate_fn(store, ctx));
    m
}

/// `once_within(key, secs)`: true at most once per window per key.
pub(super) fn once_within_fn(
    r: Registers,
    c: Shared,
) -> impl Fn(&str, Dynamic) -> FnResult<bool> + Send + Sync + Clone + 'static {
    move |key: &str, secs: Dynamic| {
        wrote(&c, key);
        r.once_within(key, seconds(&secs)?).map_err(reg_err)
    }
}

/// `accumulate(key, threshold, secs)`: true when `threshold` occurrences fall in the window.
pub(super) fn accumulate_fn(
    r: Registers,
    c: Shared,
) -> impl Fn(&str, INT, Dynamic) -> FnResult<bool> + Send + Sync + Clone + 'static {
    move |key: &str, threshold: INT, secs: Dynamic| {
        wrote(&c, key);
        r.accumulate(key, threshold.max(1) as u64, seconds(&secs)?)
            .map_err(reg_err)
    }
}

/// Seconds given as an int or a float.
fn seconds(d: &Dynamic) -> FnResult<f64> {
    number(d, "seconds")
}

fn number(d: &Dynamic, what: &str) -> FnResult<f64> {
    if let Ok(i) = d.as_int() {
        return Ok(i as f64);
    }
    d.as_float()
        .map_err(|t| format!("{what} must be a number, not {t}").into())
}
