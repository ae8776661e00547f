//! Things a user names (samplers, grids, correctors, data sets, SDEs, …): each
//! kind keeps one table of (value, name, one-line description) beside its code,
//! and everything that spells a name — config parsing, command-line values and
//! help, `scoregen list`, error messages, Python's name lists — reads it from
//! there through [`Named`]. Adding a sampler is then one row, not one edit in
//! every front end.

/// A closed set of values, each with the one name users write and a line
/// that says what it is.
pub trait Named: Copy + PartialEq + std::fmt::Debug + Sized + 'static {
    /// What one value is called in messages ("sampler", "grid").
    const WHAT: &'static str;
    /// Every value, in the order `scoregen list` and `--help` show them.
    fn all() -> &'static [Self];
    /// The name in configs, on the command line and in Python.
    fn name(self) -> &'static str;
    /// One line for `scoregen list` and `--help`.
    fn description(self) -> &'static str;

    /// Other names a config may use for a value (kept for old configs; never shown).
    fn aliases() -> &'static [(&'static str, Self)] {
        &[]
    }

    /// The value called `name` (or one of its aliases), if any.
    fn parse(name: &str) -> Option<Self> {
        Self::all()
            .iter()
            .copied()
            .find(|v| v.name() == name)
            .or_else(|| Self::aliases().iter().find(|(a, _)| *a == name).map(|(_, v)| *v))
    }
    /// Every name, in order.
    fn names() -> Vec<&'static str> {
        Self::all().iter().map(|v| v.name()).collect()
    }
    /// "a, b, c": the names for a message.
    fn names_joined() -> String {
        Self::names().join(", ")
    }
    /// The value called `name`, or a message listing the names there are.
    fn parse_or_explain(name: &str) -> std::result::Result<Self, String> {
        Self::parse(name).ok_or_else(|| format!("expected one of {}, found `{name}`", Self::names_joined()))
    }
}

/// `Display`, `FromStr`, serde (as the name string) and, with the `clap`
/// feature, `clap::ValueEnum` (values and their help from the table) for a
/// [`Named`] type: the same five impls for every registry, written once.
#[macro_export]
macro_rules! impl_named_traits {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::named::Named::name(*self))
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                <$t as $crate::named::Named>::parse_or_explain(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str($crate::named::Named::name(*self))
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                <$t as $crate::named::Named>::parse(&s).ok_or_else(|| {
                    static NAMES: std::sync::LazyLock<Vec<&'static str>> =
                        std::sync::LazyLock::new(<$t as $crate::named::Named>::names);
                    <D::Error as serde::de::Error>::unknown_variant(&s, &NAMES)
                })
            }
        }
        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                <$t as $crate::named::Named>::all()
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(
                    clap::builder::PossibleValue::new($crate::named::Named::name(*self))
                        .help($crate::named::Named::description(*self)),
                )
            }
        }
    };
}

/// [`Named`] (and the traits of [`impl_named_traits!`]) for a type whose
/// values, names and descriptions are one static table of `(value, name,
/// description)` rows: `named_table!(Grid, "grid", GRIDS)`, optionally with
/// `aliases: &[("old-name", Value)]`. The table's order is the order shown.
#[macro_export]
macro_rules! named_table {
    ($t:ty, $what:expr, $table:expr $(, aliases: $aliases:expr)?) => {
        impl $crate::named::Named for $t {
            const WHAT: &'static str = $what;
            fn all() -> &'static [Self] {
                static ALL: std::sync::LazyLock<Vec<$t>> =
                    std::sync::LazyLock::new(|| $table.iter().map(|row| row.0).collect());
                &ALL
            }
            fn name(self) -> &'static str {
                $table.iter().find(|row| row.0 == self).expect("every value has a row in its table").1
            }
            fn description(self) -> &'static str {
                $table.iter().find(|row| row.0 == self).expect("every value has a row in its table").2
            }
            $(
                fn aliases() -> &'static [(&'static str, Self)] {
                    $aliases
                }
            )?
        }
        $crate::impl_named_traits!($t);
    };
}
