# bash completion for lora-train(1)
_lora_train()
{
	local cur prev
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	case $prev in
	-m|--model)
		COMPREPLY=($(compgen -d -- "$cur"))
		return ;;
	-d|--data)
		COMPREPLY=($(compgen -f -- "$cur"))
		return ;;
	-t|--targets)
		COMPREPLY=($(compgen -W "q_proj,v_proj q_proj k_proj v_proj o_proj gate_proj up_proj down_proj all" -- "$cur"))
		return ;;
	-r|--rank|-a|--alpha|--lr|--steps|--epochs|-b|--batch|--weight-decay|-s|--seed|-n|--name)
		return ;;
	esac
	COMPREPLY=($(compgen -W "--model --data --rank --alpha --targets --lr --steps --epochs --batch --weight-decay --seed --name --quiet --help --version" -- "$cur"))
}
complete -F _lora_train lora-train
