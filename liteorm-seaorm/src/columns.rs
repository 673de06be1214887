//! The column names of SeaORM entities, for rendering recorded changes (the audit trail).

use liteorm_changeset::ColumnNames;
use sea_orm::{EntityTrait, IdenStatic as _, Iterable as _};

/// Extends liteorm's [`ColumnNames`] with SeaORM entities.
pub trait EntityColumns: Sized {
    /// Adds `E`'s table with its columns in declaration order: the table's column order when it
    /// was created from the entity (`Schema::create_table_from_entity`). For a table created
    /// otherwise, read the names from the database with [`ColumnNames::of`].
    fn entity<E: EntityTrait>(self) -> Self;
}

impl EntityColumns for ColumnNames {
    fn entity<E: EntityTrait>(self) -> Self {
        self.table(
            E::default().table_name(),
            E::Column::iter().map(|column| column.as_str()),
        )
    }
}
