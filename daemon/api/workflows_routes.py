"""Workflows: stored API-format ComfyUI graphs and their parameter mappings."""

from __future__ import annotations

from socialsync.common.auth import Role
from socialsync.common.servers import MessageResponse
from socialsync.common.workflows import Workflow, WorkflowCreate, WorkflowUpdate
from socialsync.daemon import keys
from socialsync.daemon.api.registry import Ctx, Routes
from socialsync.daemon.errors import NotFound

routes = Routes("workflows")


def workflow_id(ctx: Ctx) -> int:
    return ctx.int_param("id", lambda raw: NotFound("Workflow not found", f"no workflow with id {raw}"))


@routes.get("/api/workflows", response=list[Workflow])
async def list_workflows(ctx: Ctx) -> list[Workflow]:
    """Every stored workflow."""
    return await ctx[keys.WORKFLOWS].list()


@routes.post("/api/workflows", role=Role.OPERATOR, body=WorkflowCreate, response=Workflow, status=201,
             action="workflow.create", target_type="workflow")
async def create_workflow(ctx: Ctx) -> Workflow:
    """Store an API-format graph; without a mapping it is inferred from the graph."""
    workflow = await ctx[keys.WORKFLOWS].create(ctx.body)
    ctx.audit.update(target_id=workflow.id, details={"name": workflow.name})
    return workflow


@routes.get("/api/workflows/{id}", response=Workflow)
async def get_workflow(ctx: Ctx) -> Workflow:
    """One workflow."""
    return await ctx[keys.WORKFLOWS].get(workflow_id(ctx))


@routes.put("/api/workflows/{id}", role=Role.OPERATOR, body=WorkflowUpdate, response=Workflow,
            action="workflow.update", target_type="workflow")
async def update_workflow(ctx: Ctx) -> Workflow:
    """Replace the fields given (name, description, graph, mapping)."""
    ctx.audit["details"] = {"fields": sorted(ctx.body.model_dump(exclude_none=True))}
    return await ctx[keys.WORKFLOWS].update(workflow_id(ctx), ctx.body)


@routes.delete("/api/workflows/{id}", role=Role.OPERATOR, response=MessageResponse, action="workflow.delete",
               target_type="workflow")
async def delete_workflow(ctx: Ctx) -> MessageResponse:
    """Delete a workflow (generations that used it keep their parameters)."""
    return await ctx[keys.WORKFLOWS].delete(workflow_id(ctx))
