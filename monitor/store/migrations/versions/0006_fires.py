"""fires: a job fire as a unit of record; lease epochs for fencing; run work time without downtime

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fires",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("job", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("trigger", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("planned", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("after_job_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("fires", schema=None) as batch_op:
        batch_op.create_index("ix_fires_status", ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_fires_job"), ["job"], unique=False)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fire_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("segment_started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_runs_fire_id"), ["fire_id"], unique=False)
        batch_op.create_foreign_key("fk_runs_fire_id_fires", "fires", ["fire_id"], ["id"])
    with op.batch_alter_table("daemon_lease", schema=None) as batch_op:
        batch_op.add_column(sa.Column("epoch", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("daemon_lease", schema=None) as batch_op:
        batch_op.drop_column("epoch")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_runs_fire_id_fires", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_runs_fire_id"))
        batch_op.drop_column("progress_at")
        batch_op.drop_column("segment_started_at")
        batch_op.drop_column("fire_id")
    with op.batch_alter_table("fires", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fires_job"))
        batch_op.drop_index("ix_fires_status")
    op.drop_table("fires")
