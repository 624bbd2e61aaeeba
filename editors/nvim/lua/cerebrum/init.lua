--- Cerebrum for Neovim: ghost-text completions and the "Refactor to async" code action
--- from a remote lsp-edge, reached over TCP with `vim.lsp.rpc.connect`.
---
--- The client runs beside whatever other language servers a buffer has. On Neovim 0.12+
--- inline completions use the native `vim.lsp.inline_completion`; on 0.11 the
--- `cerebrum.inline` module requests and renders them itself.

local M = {}

--- @class cerebrum.Keymaps
--- @field accept string|false        accept the whole suggestion (falls through when none is shown)
--- @field accept_line string|false   accept up to the end of the suggestion's current line
--- @field accept_word string|false   accept the next word
--- @field dismiss string|false       hide the suggestion (falls through when none is shown)

--- @class cerebrum.Config
--- @field host string         lsp-edge's address (IP or name; names are resolved once at start)
--- @field port integer
--- @field token string?       session token, sent as initializationOptions.token (default: $CEREBRUM_LSP_TOKEN)
--- @field filetypes string[]
--- @field root_markers string[]
--- @field inline boolean      ghost-text completions on or off
--- @field debounce_ms integer wait after the last keystroke before asking (0.11 path)
--- @field native boolean?     use vim.lsp.inline_completion (default: when Neovim has it)
--- @field keymaps cerebrum.Keymaps
M.defaults = {
  host = '127.0.0.1',
  port = 7001,
  token = nil,
  filetypes = { 'python', 'rust', 'typescript', 'javascript', 'javascriptreact', 'go', 'c', 'java' },
  root_markers = { '.git', 'pyproject.toml', 'setup.py', 'Cargo.toml', 'package.json', 'go.mod', 'pom.xml', 'build.gradle' },
  inline = true,
  debounce_ms = 150,
  native = nil,
  keymaps = {
    accept = '<Tab>',
    accept_line = '<M-l>',
    accept_word = '<M-w>',
    dismiss = '<C-]>',
  },
}

--- @type cerebrum.Config
M.config = vim.deepcopy(M.defaults)

local NAME = 'cerebrum'
local augroup = vim.api.nvim_create_augroup('cerebrum', { clear = true })

--- Whether this Neovim has native inline completion (0.12+).
local function has_native()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

local function use_native()
  if M.config.native == nil then
    return has_native()
  end
  return M.config.native and has_native()
end

--- `vim.lsp.rpc.connect` needs an address; a Tailscale MagicDNS name is resolved here.
--- @return string? address, string? error
local function resolve(host)
  if host:match('^%d+%.%d+%.%d+%.%d+$') or host:find(':', 1, true) then
    return host
  end
  local infos, err = vim.uv.getaddrinfo(host, nil, { socktype = 'stream' })
  if not infos or #infos == 0 then
    return nil, ('cannot resolve %s: %s'):format(host, err or 'no address')
  end
  for _, info in ipairs(infos) do
    if info.family == 'inet' then
      return info.addr
    end
  end
  return infos[1].addr
end

--- The running Cerebrum client attached to `bufnr` (default: current), if any.
--- @return vim.lsp.Client?
function M.client(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or vim.api.nvim_get_current_buf(), name = NAME })[1]
end

local function capabilities()
  local caps = vim.lsp.protocol.make_client_capabilities()
  -- Neovim 0.11 does not announce LSP 3.18 inline completion; the plugin implements it.
  caps.textDocument = caps.textDocument or {}
  caps.textDocument.inlineCompletion = caps.textDocument.inlineCompletion or { dynamicRegistration = false }
  return caps
end

local address_error

--- Starts (or reuses) the client for `bufnr`.
function M.attach(bufnr)
  local address, err = resolve(M.config.host)
  if not address then
    if address_error ~= err then
      address_error = err
      vim.notify('Cerebrum: ' .. err, vim.log.levels.ERROR)
    end
    return
  end
  local token = M.config.token or vim.env.CEREBRUM_LSP_TOKEN
  local root = vim.fs.root(bufnr, M.config.root_markers) or vim.fn.getcwd()
  local handlers = {}
  if not use_native() then
    handlers['$/progress'] = require('cerebrum.inline').progress_handler
  end
  vim.lsp.start({
    name = NAME,
    cmd = vim.lsp.rpc.connect(address, M.config.port),
    root_dir = root,
    init_options = (token and token ~= '') and { token = token } or vim.empty_dict(),
    capabilities = capabilities(),
    handlers = handlers,
    on_attach = function(client, buf)
      M._on_attach(client, buf)
    end,
  }, { bufnr = bufnr })
end

function M._on_attach(client, bufnr)
  if not M.config.inline or not client:supports_method('textDocument/inlineCompletion', bufnr) then
    return
  end
  if use_native() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr, client_id = client.id })
  else
    require('cerebrum.inline').attach(bufnr, client.id)
  end
end

--- Accepts the shown suggestion; false when there is none.
function M.accept()
  if use_native() then
    return vim.lsp.inline_completion.get() == true
  end
  return require('cerebrum.inline').accept('all')
end

--- The insert-mode mappings our keys had before setup(), by lhs.
local fallbacks = {}

--- Maps `lhs` in insert mode to `action` when a suggestion is shown, else to what `lhs`
--- did before (an earlier mapping, or the key itself).
local function map_fallthrough(lhs, action)
  if not lhs then
    return
  end
  local previous = vim.fn.maparg(lhs, 'i', false, true)
  if previous.desc and vim.startswith(previous.desc, 'Cerebrum: ') then
    -- setup() ran before: fall through to what the key did before the first run.
    previous = fallbacks[lhs]
  elseif previous.buffer == 1 or vim.tbl_isempty(previous) then
    previous = nil
  end
  fallbacks[lhs] = previous
  local raw = vim.api.nvim_replace_termcodes(lhs, true, false, true)
  vim.keymap.set('i', lhs, function()
    if action.visible() then
      vim.schedule(action.run)
      return ''
    end
    if previous and previous.callback then
      local result = previous.callback()
      if previous.expr ~= 1 or type(result) ~= 'string' then
        return ''
      end
      -- Such as Neovim's own <Tab> (snippet jump), which returns '<Tab>'.
      if previous.replace_keycodes == 1 then
        result = vim.api.nvim_replace_termcodes(result, true, true, true)
      end
      return result
    elseif previous and previous.rhs and previous.rhs ~= '' then
      if previous.expr == 1 then
        return vim.api.nvim_eval(previous.rhs)
      end
      return vim.api.nvim_replace_termcodes(previous.rhs, true, false, true)
    end
    return raw
  end, { expr = true, replace_keycodes = false, silent = true, desc = 'Cerebrum: ' .. action.desc })
end

local function set_keymaps()
  local km = M.config.keymaps
  if use_native() then
    map_fallthrough(km.accept, {
      desc = 'accept suggestion',
      -- The native API has no "is one shown?" query; get() answers by accepting.
      visible = function()
        return vim.lsp.inline_completion.get()
      end,
      run = function() end,
    })
    return
  end
  local inline = require('cerebrum.inline')
  local function action(kind, desc)
    return {
      desc = desc,
      visible = inline.visible,
      run = function()
        if kind == 'dismiss' then
          inline.dismiss()
        else
          inline.accept(kind)
        end
      end,
    }
  end
  map_fallthrough(km.accept, action('all', 'accept suggestion'))
  map_fallthrough(km.accept_line, action('line', 'accept one line'))
  map_fallthrough(km.accept_word, action('word', 'accept one word'))
  map_fallthrough(km.dismiss, action('dismiss', 'dismiss suggestion'))
end

--- Converts a byte column on `row` (0-based) to the client's position encoding.
local function lsp_character(bufnr, row, col, encoding)
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  col = math.min(col, #line)
  if encoding == 'utf-8' then
    return col
  end
  return vim.str_utfindex(line, encoding, col, false)
end

--- The LSP range of the last visual selection when the command ran on it, else of the
--- lines `line1..line2` (1-based, inclusive).
function M.selection_range(bufnr, line1, line2, encoding)
  local vstart = vim.api.nvim_buf_get_mark(bufnr, '<')
  local vend = vim.api.nvim_buf_get_mark(bufnr, '>')
  local srow, scol, erow, ecol
  if vstart[1] == line1 and vend[1] == line2 and vim.fn.visualmode() == 'v' then
    srow, scol, erow = line1 - 1, vstart[2], line2 - 1
    local last = vim.api.nvim_buf_get_lines(bufnr, erow, erow + 1, false)[1] or ''
    -- '> marks the last selected character: include all of its bytes.
    ecol = math.min(#last, vend[2] + math.max(1, vim.str_utf_end(last, vend[2] + 1) + 1))
  else
    srow, scol, erow = line1 - 1, 0, line2 - 1
    ecol = #(vim.api.nvim_buf_get_lines(bufnr, erow, erow + 1, false)[1] or '')
  end
  return {
    start = { line = srow, character = lsp_character(bufnr, srow, scol, encoding) },
    ['end'] = { line = erow, character = lsp_character(bufnr, erow, ecol, encoding) },
  }
end

--- Runs `cerebrum.instruct` on lines `line1..line2` (or the visual selection on them).
--- The edge answers with a `workspace/applyEdit`, which Neovim applies.
function M.instruct(instruction, line1, line2)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = M.client(bufnr)
  if not client then
    vim.notify('Cerebrum: no lsp-edge session for this buffer', vim.log.levels.ERROR)
    return
  end
  instruction = vim.trim(instruction or '')
  if instruction == '' then
    vim.notify('Cerebrum: usage :Cerebrum instruct {instruction}', vim.log.levels.ERROR)
    return
  end
  local args = {
    instruction = instruction,
    uri = vim.uri_from_bufnr(bufnr),
    range = M.selection_range(bufnr, line1, line2, client.offset_encoding),
  }
  vim.notify('Cerebrum: ' .. instruction .. '…', vim.log.levels.INFO)
  client:request('workspace/executeCommand', {
    command = 'cerebrum.instruct',
    arguments = { args },
  }, function(err)
    if err then
      vim.notify('Cerebrum: ' .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
    end
  end, bufnr)
end

--- What `:Cerebrum status` shows, as data.
function M.status()
  local bufnr = vim.api.nvim_get_current_buf()
  local client = M.client(bufnr)
  local caps = client and client.server_capabilities or {}
  local status = {
    address = ('%s:%d'):format(M.config.host, M.config.port),
    filetypes = M.config.filetypes,
    mode = use_native() and 'native (vim.lsp.inline_completion)' or 'plugin (Neovim 0.11)',
    attached = client ~= nil,
    initialized = client ~= nil and client.initialized == true,
    client_id = client and client.id,
    position_encoding = client and client.offset_encoding,
    inline_completion = caps.inlineCompletionProvider ~= nil,
    code_actions = caps.codeActionProvider ~= nil,
  }
  if not use_native() then
    status.inline = require('cerebrum.inline').state(bufnr)
  end
  return status
end

local function print_status()
  local s = M.status()
  local lines = {
    ('Cerebrum: %s, %s'):format(
      s.address,
      s.attached and (s.initialized and 'connected' or 'connecting') or 'not attached to this buffer'
    ),
    ('  filetypes: %s; inline completion: %s'):format(table.concat(s.filetypes, ', '), s.mode),
  }
  if s.attached then
    table.insert(
      lines,
      ('  client %d, encoding %s; server offers inline completion: %s, code actions: %s'):format(
        s.client_id,
        tostring(s.position_encoding),
        s.inline_completion and 'yes' or 'no',
        s.code_actions and 'yes' or 'no'
      )
    )
  end
  if s.inline then
    table.insert(
      lines,
      ('  requests: %d sent, %d cancelled; partial results: %d; suggestion shown: %s'):format(
        s.inline.requests,
        s.inline.cancelled,
        s.inline.partials,
        s.inline.visible and 'yes' or 'no'
      )
    )
  end
  vim.notify(table.concat(lines, '\n'), vim.log.levels.INFO)
end

--- `:Cerebrum {subcommand}`.
function M.command(opts)
  local sub, rest = (opts.args or ''):match('^%s*(%S*)%s*(.-)%s*$')
  if sub == 'status' or sub == '' then
    print_status()
  elseif sub == 'instruct' then
    M.instruct(rest, opts.line1, opts.line2)
  else
    vim.notify('Cerebrum: unknown subcommand ' .. sub .. ' (status, instruct)', vim.log.levels.ERROR)
  end
end

function M.create_command()
  vim.api.nvim_create_user_command('Cerebrum', M.command, {
    nargs = '*',
    range = true,
    desc = 'Cerebrum: status | instruct {text}',
    complete = function(arglead, cmdline)
      if cmdline:match('^%S*Cerebrum%s+%S*$') then
        return vim.tbl_filter(function(s)
          return s:find(arglead, 1, true) == 1
        end, { 'status', 'instruct' })
      end
      return {}
    end,
  })
end

--- @param opts cerebrum.Config?
function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  vim.validate('host', M.config.host, 'string')
  vim.validate('port', M.config.port, 'number')
  vim.validate('filetypes', M.config.filetypes, 'table')
  vim.api.nvim_set_hl(0, 'CerebrumSuggestion', { link = 'Comment', default = true })
  M.create_command()
  set_keymaps()

  vim.api.nvim_clear_autocmds({ group = augroup })
  vim.api.nvim_create_autocmd('FileType', {
    group = augroup,
    pattern = M.config.filetypes,
    callback = function(ev)
      M.attach(ev.buf)
    end,
  })
  -- Buffers already open when setup runs (lazy loading).
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) and vim.tbl_contains(M.config.filetypes, vim.bo[buf].filetype) then
      M.attach(buf)
    end
  end
end

return M
