"""initial schema: models, eval set versions, runs, item results

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 12:54:32.928239
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "evalset_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("task", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_evalset_versions_name_version"),
    )
    with op.batch_alter_table("evalset_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evalset_versions_name"), ["name"], unique=False)

    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("base", sa.Text(), nullable=False),
        sa.Column("adapter", sa.Text(), nullable=True),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_models_name"), ["name"], unique=True)

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("evalset_version_id", sa.Integer(), nullable=False),
        sa.Column("evalset_name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("job", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("trigger", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("strategy", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("fewshot_k", sa.Integer(), nullable=False),
        sa.Column("settings_digest", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("model_fingerprint", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
        sa.Column("evalset_version", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("load_s", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("items_total", sa.Integer(), nullable=False),
        sa.Column("items_done", sa.Integer(), nullable=False),
        sa.Column("items_failed", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("backend_info", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["evalset_version_id"],
            ["evalset_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_runs_model_evalset_started", ["model_id", "evalset_name", "started_at"], unique=False
        )
        batch_op.create_index("ix_runs_status", ["status"], unique=False)

    op.create_table(
        "item_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("prediction", sa.Text(), nullable=True),
        sa.Column("target", sa.JSON(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("loglikelihoods", sa.JSON(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "item_id", name="uq_item_results_run_item"),
    )
    with op.batch_alter_table("item_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_item_results_run_id"), ["run_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("item_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_item_results_run_id"))

    op.drop_table("item_results")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_status")
        batch_op.drop_index("ix_runs_model_evalset_started")

    op.drop_table("runs")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_name"))

    op.drop_table("models")
    with op.batch_alter_table("evalset_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evalset_versions_name"))

    op.drop_table("evalset_versions")
