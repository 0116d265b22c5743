"""item_results.details: the prompt scored, the conversation sent, every sample, filtered outputs

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("item_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("details", sa.JSON(), nullable=True))
    op.create_table(
        "item_texts",
        sa.Column("sha256", sa.String(length=71), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )


def downgrade() -> None:
    op.drop_table("item_texts")
    with op.batch_alter_table("item_results", schema=None) as batch_op:
        batch_op.drop_column("details")
